"""RDMA NIC discovery: PCI function <-> RDMA device <-> netdev, link layer, speed.

A NIC is listed when its PCI function has an RDMA device (``class/infiniband/<dev>/device``). A
Mellanox physical function without one (``mlx5_ib`` not loaded) is listed too, with
``rdma_device=None``, so the operator sees the missing driver. A virtual function is listed only
when it has its own RDMA device: a VF without one cannot carry RoCE traffic for a pod.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cni.linux.nic import is_representor, pick_uplink

from .pci import PciDevice, pci_sort_key
from .sysfs import Sysfs, TopologyError

MELLANOX_VENDOR = "0x15b3"
CLASS_NETWORK = 0x02  # class >> 16
NET_TYPE_INFINIBAND = 32  # ARPHRD_INFINIBAND in class/net/<if>/type
RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*Gb/sec")


@dataclass
class NicRecord:
    device: PciDevice
    rdma_device: str | None
    netdev: str | None
    link_layer: str
    speed_mbps: int | None


def find_rdma_nics(fs: Sysfs, devices: dict[str, PciDevice]) -> list[NicRecord]:
    rdma_by_pci = _rdma_devices_by_pci(fs, devices)
    netdevs_by_pci = _netdevs_by_pci(fs, devices)
    records: list[NicRecord] = []
    for address in sorted(devices, key=pci_sort_key):
        device = devices[address]
        rdma = rdma_by_pci.get(address)
        if rdma is None and not _is_rdma_capable_pf(device):
            continue
        netdev = _primary_netdev(fs, rdma, netdevs_by_pci.get(address, []))
        records.append(
            NicRecord(
                device=device,
                rdma_device=rdma,
                netdev=netdev,
                link_layer=_link_layer(fs, rdma, netdev),
                speed_mbps=_speed_mbps(fs, rdma, netdev),
            )
        )
    return records


def _is_rdma_capable_pf(device: PciDevice) -> bool:
    return device.vendor == MELLANOX_VENDOR and device.pci_class >> 16 == CLASS_NETWORK and not device.is_vf


def _rdma_devices_by_pci(fs: Sysfs, devices: dict[str, PciDevice]) -> dict[str, str]:
    ib_dir = fs.path("class", "infiniband")
    found: dict[str, str] = {}
    for name in fs.listdir(ib_dir):
        # Software RDMA (rxe, siw) has no PCI parent: it is not a NIC next to a GPU.
        address = fs.link_name(ib_dir / name / "device")
        if address in devices:
            found.setdefault(address, name)  # name order: mlx5_0 before mlx5_bond_0
    return found


def _netdevs_by_pci(fs: Sysfs, devices: dict[str, PciDevice]) -> dict[str, list[str]]:
    net_dir = fs.path("class", "net")
    found: dict[str, list[str]] = {}
    for name in fs.listdir(net_dir):
        address = fs.link_name(net_dir / name / "device")
        if address not in devices:
            continue  # virtual interfaces (lo, bridges, veth) have no PCI device
        if is_representor(_read_optional(fs, net_dir / name / "phys_port_name")):
            continue  # a switchdev representor shares the PF's PCI address but is not the uplink
        found.setdefault(address, []).append(name)
    return found


def _primary_netdev(fs: Sysfs, rdma: str | None, candidates: list[str]) -> str | None:
    # The same rule the CNI plugins use to find a NIC's uplink (cni.linux.nic).
    bound = None
    if rdma is not None:
        bound = _read_optional(fs, fs.path("class", "infiniband", rdma, "ports", "1", "gid_attrs", "ndevs", "0"))
    return pick_uplink(candidates, bound)


def _link_layer(fs: Sysfs, rdma: str | None, netdev: str | None) -> str:
    if rdma is not None:
        text = _read_optional(fs, fs.path("class", "infiniband", rdma, "ports", "1", "link_layer"))
        if text:
            return "InfiniBand" if text.lower() == "infiniband" else "Ethernet"
    if netdev is not None:
        net_type = _read_optional(fs, fs.path("class", "net", netdev, "type"))
        if net_type == str(NET_TYPE_INFINIBAND):
            return "InfiniBand"
    return "Ethernet"


def _speed_mbps(fs: Sysfs, rdma: str | None, netdev: str | None) -> int | None:
    if rdma is not None:
        rate = _read_optional(fs, fs.path("class", "infiniband", rdma, "ports", "1", "rate"))
        match = RATE_RE.match(rate or "")
        if match:
            return round(float(match.group(1)) * 1000)
    if netdev is not None:
        speed = _read_optional(fs, fs.path("class", "net", netdev, "speed"))
        if speed and speed.lstrip("-").isdigit() and int(speed) > 0:
            return int(speed)
    return None


def _read_optional(fs: Sysfs, path: Path) -> str | None:
    """Attributes that may be absent or unreadable in normal operation (``speed`` on a down link
    fails with EINVAL), so a failure here means "unknown", not bad input."""
    try:
        return fs.read_or(path)
    except TopologyError:
        return None
