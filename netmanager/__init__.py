"""The node agent: serves the CNI shim over a root-only socket (`agent`, `server`) and discovers the
node's GPU/NIC/PCIe/NUMA topology from sysfs (`topology`)."""
