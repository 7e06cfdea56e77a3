"""railnet-sriov: an SR-IOV VF (chosen by PCI address) moved into the pod's network namespace.

Modules: `vf` (finding the VF, its PF and their netdevs in sysfs, never outside the sysfs root),
`plugin` (ADD/DEL/CHECK/GC/STATUS).
"""
