"""PCI device scan: identity, NUMA node, position in the PCIe tree, SR-IOV links.

Linux exposes every function as ``bus/pci/devices/<BDF>``, a symlink into the device tree
``devices/pci<domain>:<bus>/<root port>/<switch port>/.../<BDF>``. The chain of BDF directories
between the host bridge (``pci0000:17``) and the device is the device's upstream bridge path: the
first entry is the root port, every later one a PCIe switch port (upstream or downstream).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .sysfs import Sysfs, TopologyError

BDF_RE = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
HOST_BRIDGE_RE = re.compile(r"^pci[0-9a-f]{4,8}:[0-9a-f]{2}$")
VIRTFN_RE = re.compile(r"^virtfn(\d+)$")

CLASS_PCI_BRIDGE = 0x0604  # class >> 8: PCI-to-PCI bridge (root and switch ports)


@dataclass
class PciDevice:
    address: str
    vendor: str  # "0x10de"
    device_id: str  # "0x2330"
    pci_class: int  # 24-bit class code, e.g. 0x030200
    numa_node: int  # -1 when unknown
    root_complex: str  # "pci0000:17"
    bridges: list[str]  # upstream bridge BDFs, root port first
    sysfs_dir: Path
    physfn: str | None = None
    virtfns: list[str] = field(default_factory=list)
    sriov_total_vfs: int = 0
    sriov_num_vfs: int = 0

    @property
    def is_bridge(self) -> bool:
        return self.pci_class >> 8 == CLASS_PCI_BRIDGE

    @property
    def is_vf(self) -> bool:
        return self.physfn is not None

    @property
    def pcie_switch(self) -> str | None:
        # bridges[0] is the root port; bridges[1], when present, is the top switch's upstream port.
        return self.bridges[1] if len(self.bridges) > 1 else None


def pci_sort_key(address: str) -> tuple[int, int, int, int]:
    """Numeric BDF order (domains may be wider than 4 hex digits, e.g. behind Intel VMD)."""
    domain, bus, devfn = address.split(":")
    dev, fn = devfn.split(".")
    return int(domain, 16), int(bus, 16), int(dev, 16), int(fn, 16)


def scan_pci(fs: Sysfs) -> dict[str, PciDevice]:
    """Every PCI function under ``bus/pci/devices``, keyed by BDF."""
    bus_dir = fs.path("bus", "pci", "devices")
    devices: dict[str, PciDevice] = {}
    for name in fs.listdir(bus_dir):
        if not BDF_RE.match(name):
            continue  # not a function link; ignore rather than guess
        devices[name] = _read_device(fs, bus_dir / name)
    return devices


def _read_device(fs: Sysfs, link: Path) -> PciDevice:
    device_dir = fs.resolve(link)
    address = link.name
    root_complex, bridges = _tree_position(device_dir, address)
    class_text = fs.read(device_dir / "class")
    try:
        pci_class = int(class_text, 16)
    except ValueError:
        raise TopologyError(f"{device_dir / 'class'}: expected a hex class code, found {class_text!r}") from None
    numa = fs.read_int_or(device_dir / "numa_node", -1)
    virtfns = sorted(
        (int(m.group(1)), name) for name in fs.listdir(device_dir) if (m := VIRTFN_RE.match(name))
    )
    return PciDevice(
        address=address,
        vendor=_hex_id(fs, device_dir / "vendor"),
        device_id=_hex_id(fs, device_dir / "device"),
        pci_class=pci_class,
        numa_node=-1 if numa is None else numa,
        root_complex=root_complex,
        bridges=bridges,
        sysfs_dir=device_dir,
        physfn=fs.link_name(device_dir / "physfn"),
        virtfns=[fs.resolve(device_dir / name).name for _, name in virtfns],
        sriov_total_vfs=fs.read_int_or(device_dir / "sriov_totalvfs", 0) or 0,
        sriov_num_vfs=fs.read_int_or(device_dir / "sriov_numvfs", 0) or 0,
    )


def _tree_position(device_dir: Path, address: str) -> tuple[str, list[str]]:
    """(host bridge, upstream bridges) from the resolved device directory."""
    parts = device_dir.parts
    hosts = [i for i, part in enumerate(parts) if HOST_BRIDGE_RE.match(part)]
    if not hosts or parts[-1] != address:
        raise TopologyError(f"{device_dir}: not inside a devices/pci<domain>:<bus> tree")
    # The first host bridge is the root complex; a nested one (Intel VMD) is skipped over so that
    # devices behind it still share the VMD endpoint's root complex.
    root = hosts[0]
    bridges = [part for part in parts[root + 1 : -1] if BDF_RE.match(part)]
    return parts[root], bridges


def _hex_id(fs: Sysfs, path: Path) -> str:
    text = fs.read(path)
    try:
        return f"0x{int(text, 16):04x}"
    except ValueError:
        raise TopologyError(f"{path}: expected a hex id, found {text!r}") from None
