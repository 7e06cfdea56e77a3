"""Development tooling, outside the product's code paths: the Go builds of the control plane, the
dev cluster, the CRD generator, the network lab and demo, and sysfs fixture servers."""
