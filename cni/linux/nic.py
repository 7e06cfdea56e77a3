"""Finding the parent NIC ("master") of a secondary interface.

A RoCE rail is known to operators by its netdev name, its PCI address (what device plugins
hand out as deviceID) or its RDMA device name (mlx5_0): all three resolve to a netdev via sysfs.
"""

from __future__ import annotations

from pathlib import Path

from cni.spec.errors import INVALID_CONFIG, MASTER_NOT_FOUND, CniError


def _netdevs_under(device_dir: Path) -> list[str]:
    net = device_dir / "net"
    return sorted(p.name for p in net.iterdir()) if net.is_dir() else []


def resolve_master(sysfs: Path, master: str | None, pci_address: str | None, rdma_device: str | None) -> str:
    """The netdev name of the parent (the caller checks that it exists in its namespace)."""
    given = [k for k, v in (("master", master), ("pciAddress", pci_address), ("rdmaDevice", rdma_device)) if v]
    if len(given) != 1:
        raise CniError(INVALID_CONFIG, "the parent NIC is not set" if not given else
                       f"the parent NIC is set more than once ({', '.join(given)})",
                       "set exactly one of 'master' (netdev name), 'pciAddress' or 'rdmaDevice'")
    if master:
        name, how = master, f"interface {master!r}"
    elif pci_address:
        candidates = _netdevs_under(sysfs / "bus/pci/devices" / pci_address)
        how = f"PCI device {pci_address} (under {sysfs}/bus/pci/devices)"
        name = candidates[0] if candidates else ""
    else:
        candidates = _netdevs_under(sysfs / "class/infiniband" / str(rdma_device) / "device")
        how = f"RDMA device {rdma_device!r} (under {sysfs}/class/infiniband)"
        name = candidates[0] if candidates else ""
    if not name:
        raise CniError(MASTER_NOT_FOUND, f"parent NIC {how} not found on this node",
                       "sysfs shows no network device for it; is the driver loaded?")
    return name
