"""Finding a VF in sysfs from its PCI address: its PF, its number on the PF, both netdevs, its
RDMA device.

    bus/pci/devices/<vf>/physfn          -> the PF's device dir
    bus/pci/devices/<pf>/virtfn<N>       -> the VF's device dir (N is the VF number on the PF)
    <device dir>/net/<netdev>            netdevs of the function, in the reader's namespace only
    <vf dir>/infiniband/<rdma device>    the VF's RDMA device (mlx5_4)

The address comes from a config (Multus or a device plugin puts it there), so it is validated
before it becomes a path, and every path is resolved (symlinks followed) and must stay inside the
sysfs root: a config author must not make the agent read or act on anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cni.linux.nic import RDMA_NAME, netdevs_of, normalise_pci_address, pick_uplink
from cni.spec.errors import INVALID_CONFIG, MASTER_NOT_FOUND, CniError

VIRTFN = re.compile(r"^virtfn(\d+)$")


@dataclass(frozen=True)
class Vf:
    pci_address: str
    index: int  # the VF number on its PF (`ip link set <pf> vf <index> ...`)
    pf_pci_address: str
    pf_netdev: str
    netdev: str | None  # None: not in this namespace (in a pod already) or no netdev driver
    rdma_device: str | None


def inside(root: Path, path: Path, what: str) -> Path | None:
    """`path` with symlinks resolved; None when it does not exist; a config error when it
    resolves outside the sysfs root."""
    try:
        real = path.resolve(strict=True)
    except OSError:
        return None
    if not real.is_relative_to(root.resolve()):
        raise CniError(INVALID_CONFIG, f"{what} resolves outside the sysfs root",
                       f"{path} leads to {real}; deviceID must name a PCI device under {root}/bus/pci/devices")
    return real


def pci_address(value: str) -> str:
    try:
        return normalise_pci_address(value)
    except CniError:
        raise CniError(INVALID_CONFIG, f"deviceID {value!r} is not a PCI address",
                       "use the VF's domain:bus:device.function, e.g. 0000:3b:02.1") from None


def device_dir(sysfs: Path, address: str) -> Path | None:
    return inside(sysfs, sysfs / "bus/pci/devices" / address, f"PCI device {address}")


def resolve_vf(sysfs: Path, device_id: str) -> Vf:
    address = pci_address(device_id)
    vf_dir = device_dir(sysfs, address)
    if vf_dir is None:
        raise CniError(MASTER_NOT_FOUND, f"PCI device {address} not found on this node",
                       f"no {sysfs}/bus/pci/devices/{address}; is deviceID the VF the device plugin allocated?")
    pf_dir = inside(sysfs, vf_dir / "physfn", f"physfn of {address}")
    if pf_dir is None:
        raise CniError(INVALID_CONFIG, f"PCI device {address} is not an SR-IOV VF (it has no physfn)",
                       "deviceID must name a virtual function; a PF or another device is not moved into pods")
    index = None
    for entry in pf_dir.iterdir():
        match = VIRTFN.fullmatch(entry.name)
        if match and inside(sysfs, entry, f"{entry.name} of {pf_dir.name}") == vf_dir:
            index = int(match.group(1))
            break
    if index is None:
        raise CniError(MASTER_NOT_FOUND, f"VF {address} is not listed by its PF {pf_dir.name}",
                       "no virtfnN link of the PF points at it; were the VFs re-created (sriov_numvfs)?")
    pf_netdev = pick_uplink(netdevs_of(pf_dir), None)
    if pf_netdev is None:
        raise CniError(MASTER_NOT_FOUND, f"the PF {pf_dir.name} of VF {address} has no netdev on this node",
                       "VF settings are made through the PF's netdev; is its driver loaded?")
    return Vf(address, index, pf_dir.name, pf_netdev, pick_uplink(netdevs_of(vf_dir), None), rdma_of(vf_dir))


def rdma_of(vf_dir: Path) -> str | None:
    ib = vf_dir / "infiniband"
    names = sorted(p.name for p in ib.iterdir()) if ib.is_dir() else []
    return names[0] if names and RDMA_NAME.fullmatch(names[0]) else None


def netdev_of(sysfs: Path, address: str) -> str | None:
    """The VF's netdev as this namespace sees it now (after its pod's namespace went away the
    kernel returns it here, under the pod-side name or as devN on a clash)."""
    vf_dir = device_dir(sysfs, address)
    return pick_uplink(netdevs_of(vf_dir), None) if vf_dir is not None else None
