"""railnet: railnet."""
