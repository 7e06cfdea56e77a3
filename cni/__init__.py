"""railnet: cni."""
