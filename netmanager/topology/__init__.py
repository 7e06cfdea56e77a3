"""Node topology discovery: PCI tree, NUMA/socket, GPUs, RDMA NICs, SR-IOV, from sysfs."""
