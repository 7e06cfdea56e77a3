"""Finding a NIC's network device in sysfs: the one resolver used by the CNI plugins and topology.

A RoCE rail is known to operators by its netdev name, its PCI address (what device plugins hand
out as deviceID) or its RDMA device name (mlx5_0); all three resolve to the NIC's uplink netdev.
A PCI function can own several netdevs: switchdev representors (pf0vf3) and IPoIB children
(ib0.8001) share its device, so the uplink is the netdev the RDMA port is bound to (the RoCE GID
table's `ndevs`), else the shortest name that is not a representor.

Names coming from a network config are validated before they become sysfs paths, and a resolved
path must stay inside the sysfs root: a config author must not be able to point the agent at an
arbitrary file.
"""

from __future__ import annotations

import re
from pathlib import Path

from cni.spec.errors import INVALID_CONFIG, MASTER_NOT_FOUND, CniError
from cni.spec.request import validate_ifname

# domain:bus:device.function, e.g. 0000:1b:00.0 (the domain may be omitted in configs: 1b:00.0)
PCI_ADDRESS = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]$")
RDMA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REPRESENTOR = re.compile(r"^(c\d+)?pf\d+(vf|sf)\d+$")  # phys_port_name of a switchdev representor


def normalise_pci_address(address: str) -> str:
    if not PCI_ADDRESS.fullmatch(address):
        raise CniError(INVALID_CONFIG, f"pciAddress {address!r} is not a PCI address",
                       "use domain:bus:device.function, e.g. 0000:1b:00.0")
    address = address.lower()
    return address if address.count(":") == 2 else "0000:" + address


def is_representor(phys_port_name: str | None) -> bool:
    return bool(phys_port_name) and REPRESENTOR.fullmatch(phys_port_name or "") is not None


def pick_uplink(candidates: list[str], bound: str | None) -> str | None:
    """The RDMA-bound netdev when it is a candidate, else the shortest name (the IPoIB parent)."""
    if bound and bound in candidates:
        return bound
    return min(candidates, key=lambda name: (len(name), name)) if candidates else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _inside(root: Path, path: Path) -> Path | None:
    """`path` with symlinks resolved, or None when it leaves the sysfs root or does not exist."""
    try:
        real = path.resolve(strict=True)
    except OSError:
        return None
    return real if real.is_relative_to(root.resolve()) else None


def netdevs_of(device_dir: Path) -> list[str]:
    """Netdevs of a PCI function, representors excluded."""
    net = device_dir / "net"
    if not net.is_dir():
        return []
    return sorted(p.name for p in net.iterdir() if not is_representor(_read(p / "phys_port_name")))


def rdma_bound_netdev(sysfs: Path, rdma_device: str) -> str | None:
    return _read(sysfs / "class/infiniband" / rdma_device / "ports/1/gid_attrs/ndevs/0")


def resolve_master(sysfs: Path, master: str | None, pci_address: str | None, rdma_device: str | None) -> str:
    """The netdev name of the parent NIC (the caller checks that it exists in its namespace)."""
    given = [k for k, v in (("master", master), ("pciAddress", pci_address), ("rdmaDevice", rdma_device)) if v]
    if len(given) != 1:
        raise CniError(INVALID_CONFIG, "the parent NIC is not set" if not given else
                       f"the parent NIC is set more than once ({', '.join(given)})",
                       "set exactly one of 'master' (netdev name), 'pciAddress' or 'rdmaDevice'")
    if master:
        try:
            validate_ifname(master)
        except CniError as exc:
            raise CniError(INVALID_CONFIG, f"master {master!r} is not an interface name", exc.details) from None
        return master
    if pci_address:
        address = normalise_pci_address(pci_address)
        how = f"PCI device {address} (under {sysfs}/bus/pci/devices)"
        device = _inside(sysfs, sysfs / "bus/pci/devices" / address)
        bound = None
    else:
        name = str(rdma_device)
        if not RDMA_NAME.fullmatch(name) or ".." in name:
            raise CniError(INVALID_CONFIG, f"rdmaDevice {name!r} is not an RDMA device name",
                           "use the name under /sys/class/infiniband, e.g. mlx5_0")
        how = f"RDMA device {name!r} (under {sysfs}/class/infiniband)"
        device = _inside(sysfs, sysfs / "class/infiniband" / name / "device")
        bound = rdma_bound_netdev(sysfs, name)
    uplink = pick_uplink(netdevs_of(device), bound) if device is not None else None
    if not uplink:
        raise CniError(MASTER_NOT_FOUND, f"parent NIC {how} not found on this node",
                       "sysfs shows no network device for it; is the driver loaded?")
    return uplink
