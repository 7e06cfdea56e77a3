"""railnet: ipam."""
