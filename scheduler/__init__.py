"""railnet: scheduler."""
