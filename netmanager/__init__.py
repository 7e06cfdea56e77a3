"""railnet: netmanager."""
