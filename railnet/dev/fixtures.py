"""Fake sysfs trees for tests and demos, written from a declarative ``Server`` spec.

``build(server, root)`` lays the server out the way Linux does (depth-first bus numbering, one
directory per PCI function nested under its bridges, ``bus/pci/devices`` / ``class/net`` /
``class/infiniband`` symlinks, SR-IOV ``physfn``/``virtfnN`` links, CPU and NUMA node directories)
and returns a ``BuiltServer``: the ground truth (addresses, names, expected tiers) computed from the
spec itself, not from the files, so tests compare discovery against an independent answer.

Named real-world layouts live in ``fixture_servers``; ``build_fixture("hgx-h100", root)`` builds one.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from netmanager.topology.model import Tier
from netmanager.topology.pci import pci_sort_key

from .fixture_spec import (
    CLASS_ETHERNET,
    CLASS_HOST_BRIDGE,
    CLASS_INFINIBAND,
    CLASS_PCI_BRIDGE,
    Device,
    Endpoint,
    Gpu,
    HostBridge,
    Nic,
    RootPort,
    Server,
    Switch,
)

DOMAIN = 0x0000
IB_RATE_NAMES = {400: "4X NDR", 200: "4X HDR", 100: "4X EDR", 56: "4X FDR", 25: "1X EDR"}


@dataclass
class BuiltDevice:
    """Ground truth for one endpoint PCI function."""

    kind: str  # "gpu" | "nic" (a PF) | "vf" | "other"
    address: str
    vendor: str
    device_id: str
    numa: int
    socket: int
    host_bridge: int  # index into Server.host_bridges
    root_port: int | None  # slot of the root port, None for integrated endpoints
    switches: tuple[int, ...]  # switch ids above the device, top first
    rdma: str | None = None
    netdev: str | None = None  # None when absent from the host (moved into a pod)
    link_layer: str = "Ethernet"
    speed_mbps: int | None = None
    pf: str | None = None
    vfs: list[str] = field(default_factory=list)
    sriov_total_vfs: int = 0

    @property
    def listed_as_nic(self) -> bool:
        """Discovery lists PFs of RDMA NICs, and VFs that have an RDMA device."""
        return self.kind == "nic" or (self.kind == "vf" and self.rdma is not None)


@dataclass
class BuiltServer:
    root: Path
    server: Server
    devices: list[BuiltDevice]  # PCI order
    cpulists: dict[int, str]  # NUMA node -> cpulist text

    @property
    def gpus(self) -> list[BuiltDevice]:
        return [d for d in self.devices if d.kind == "gpu"]

    @property
    def nics(self) -> list[BuiltDevice]:
        return [d for d in self.devices if d.listed_as_nic]

    @property
    def numa_to_socket(self) -> dict[int, int]:
        return {n: self.server.socket_of(n) for n in range(self.server.numa_nodes)}

    def tier(self, a: BuiltDevice, b: BuiltDevice) -> Tier:
        if a.host_bridge == b.host_bridge:
            return Tier.SAME_SWITCH if set(a.switches) & set(b.switches) else Tier.SAME_ROOT
        if a.numa == b.numa:
            return Tier.SAME_NUMA
        return Tier.SAME_SOCKET if a.socket == b.socket else Tier.CROSS_SOCKET

    def gpu_gpu(self) -> list[list[int]]:
        nv = Tier.NVLINK if self.server.nvlinks else None
        return [
            [Tier.NVLINK if a is b else (nv if nv is not None else self.tier(a, b)) for b in self.gpus]
            for a in self.gpus
        ]

    def gpu_gpu_pcie(self) -> list[list[int]]:
        """GPU-GPU tiers as sysfs alone sees them (no NVLink)."""
        return [[Tier.NVLINK if a is b else self.tier(a, b) for b in self.gpus] for a in self.gpus]

    def gpu_nic(self) -> list[list[int]]:
        return [[self.tier(g, n) for n in self.nics] for g in self.gpus]

    def smi_label(self, a: BuiltDevice, b: BuiltDevice) -> str:
        """The PCIe label nvidia-smi would print for the pair."""
        tier = self.tier(a, b)
        if tier == Tier.SAME_SWITCH:
            return "PIX" if a.switches[-1] == b.switches[-1] else "PXB"
        return {Tier.SAME_ROOT: "PHB", Tier.SAME_NUMA: "NODE"}.get(tier, "SYS")


def build(server: Server, root: str | os.PathLike[str]) -> BuiltServer:
    """Write ``server`` as a sysfs tree under ``root`` (created if needed)."""
    return _Builder(server, Path(root)).build()


def build_fixture(name: str, root: str | os.PathLike[str]) -> BuiltServer:
    from .fixture_servers import FIXTURES  # the catalogue imports this module's spec types

    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; choose from {', '.join(FIXTURES)}")
    return build(FIXTURES[name](), root)


def nvidia_smi_topo(built: BuiltServer, legacy_nic_names: bool = False) -> str:
    """``nvidia-smi topo -m`` text for a built server (NV# between all GPUs when it has NVLink).

    NIC columns are ``NIC0..`` with a ``NIC Legend`` (current drivers) or, with
    ``legacy_nic_names``, the RDMA device names themselves (older drivers).
    """
    gpus = built.gpus
    nics = sorted((n for n in built.nics if n.rdma), key=lambda n: _natural_key(n.rdma or ""))
    gpu_cols = [f"GPU{i}" for i in range(len(gpus))]
    nic_cols = [n.rdma or "" for n in nics] if legacy_nic_names else [f"NIC{k}" for k in range(len(nics))]

    def label(a: BuiltDevice, b: BuiltDevice) -> str:
        if a is b:
            return " X "
        if a.kind == b.kind == "gpu" and built.server.nvlinks:
            return f"NV{built.server.nvlinks}"
        return built.smi_label(a, b)

    header = "\t" + "\t".join(gpu_cols + nic_cols) + "\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID"
    lines = [header]
    for col, gpu in zip(gpu_cols, gpus, strict=True):
        cells = [label(gpu, other) for other in gpus + nics]
        lines.append("\t".join([col, *cells, built.cpulists[gpu.numa], str(gpu.numa), "", "N/A"]))
    for col, nic in zip(nic_cols, nics, strict=True):
        lines.append("\t".join([col, *(label(nic, other) for other in gpus + nics), "", "", "", ""]))
    lines += [
        "",
        "Legend:",
        "",
        "  X    = Self",
        "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)",
        "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node",
        "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)",
        "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)",
        "  PIX  = Connection traversing at most a single PCIe bridge",
        "  NV#  = Connection traversing a bonded set of # NVLinks",
    ]
    if nics and not legacy_nic_names:
        lines += ["", "NIC Legend:", ""] + [f"  NIC{k}: {n.rdma}" for k, n in enumerate(nics)]
    return "\n".join(lines) + "\n"


# --- the builder -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    host_bridge: int
    numa: int
    root_port: int | None = None
    switches: tuple[int, ...] = ()


@dataclass
class _PendingNic:
    """A NIC function whose names are assigned once every NIC's address is known."""

    spec: Nic
    device: BuiltDevice
    directory: Path
    function: int
    vf_index: int | None = None  # set for VFs
    pf_netdev: str | None = None


class _Builder:
    def __init__(self, server: Server, root: Path) -> None:
        self.server = server
        self.root = root
        self.next_bus = 0
        self.switch_ids: dict[int, int] = {}
        self.devices: list[BuiltDevice] = []
        self.pending: list[_PendingNic] = []

    def build(self) -> BuiltServer:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("bus/pci/devices", "class/net", "class/infiniband"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        cpulists = self._write_cpus()
        for index, host_bridge in enumerate(self.server.host_bridges):
            self._host_bridge(index, host_bridge)
        self._name_nics()
        self.devices.sort(key=lambda d: pci_sort_key(d.address))
        return BuiltServer(root=self.root, server=self.server, devices=self.devices, cpulists=cpulists)

    # CPUs and NUMA nodes: node n owns cores [n*k, (n+1)*k), SMT siblings offset by the core count.
    def _write_cpus(self) -> dict[int, str]:
        s = self.server
        per_node, total = s.cores_per_numa, s.numa_nodes * s.cores_per_numa
        system = self.root / "devices" / "system"
        cpulists: dict[int, str] = {}
        for node in range(s.numa_nodes):
            ranges = [
                (thread * total + node * per_node, thread * total + (node + 1) * per_node - 1)
                for thread in range(s.threads_per_core)
            ]
            cpulists[node] = ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in ranges)
            _write(system / "node" / f"node{node}" / "cpulist", cpulists[node])
            for lo, hi in ranges:
                for cpu in range(lo, hi + 1):
                    topo = system / "cpu" / f"cpu{cpu}" / "topology"
                    _write(topo / "physical_package_id", str(s.socket_of(node)))
                    _write(topo / "core_id", str(cpu % total - node * per_node))
        _write(system / "node" / "online", f"0-{s.numa_nodes - 1}" if s.numa_nodes > 1 else "0")
        _write(system / "cpu" / "online", f"0-{total * s.threads_per_core - 1}")
        return cpulists

    def _alloc_bus(self) -> int:
        bus = self.next_bus
        if bus > 0xFF:
            raise ValueError(f"{self.server.name}: PCI bus numbers exhausted (more than 256 buses)")
        self.next_bus += 1
        return bus

    def _host_bridge(self, index: int, hb: HostBridge) -> None:
        bus = hb.bus if hb.bus is not None else (0 if self.next_bus == 0 else -(-self.next_bus // 0x10) * 0x10)
        if bus < self.next_bus or bus > 0xFF:
            raise ValueError(f"{self.server.name}: host bridge bus {bus:#04x} overlaps buses already in use")
        self.next_bus = bus + 1
        hb_dir = self.root / "devices" / f"pci{DOMAIN:04x}:{bus:02x}"
        self._function(hb_dir, _bdf(bus, 0, 0), self.server.cpu_vendor, 0x09A2, CLASS_HOST_BRIDGE, hb.numa)
        where = _Where(host_bridge=index, numa=hb.numa)
        for slot, port in enumerate(hb.ports, start=1):
            if isinstance(port, RootPort):
                port_dir = self._function(hb_dir, _bdf(bus, slot, 0), port.vendor, port.device_id, CLASS_PCI_BRIDGE, hb.numa)
                self._place(port.child, port_dir, self._alloc_bus(), 0, replace(where, root_port=slot))
            else:
                self._place(port, hb_dir, bus, slot, where)

    def _place(self, item: Endpoint | Switch, parent: Path, bus: int, slot: int, where: _Where) -> None:
        if not isinstance(item, Switch):
            self._endpoint(item, parent, bus, slot, where)
            return
        switch_id = self.switch_ids.setdefault(id(item), len(self.switch_ids))
        inner = replace(where, switches=(*where.switches, switch_id))
        upstream = self._function(parent, _bdf(bus, slot, 0), item.vendor, item.device_id, CLASS_PCI_BRIDGE, where.numa)
        internal_bus = self._alloc_bus()
        for port, child in enumerate(item.children):
            downstream = self._function(
                upstream, _bdf(internal_bus, port, 0), item.vendor, item.device_id, CLASS_PCI_BRIDGE, where.numa
            )
            self._place(child, downstream, self._alloc_bus(), 0, inner)

    def _endpoint(self, spec: Endpoint, parent: Path, bus: int, slot: int, where: _Where) -> None:
        if isinstance(spec, Nic):
            self._nic(spec, parent, bus, slot, where)
            return
        address = _bdf(bus, slot, 0)
        directory = self._function(parent, address, spec.vendor, spec.device_id, spec.pci_class, where.numa)
        device = self._record("gpu" if isinstance(spec, Gpu) else "other", address, spec.vendor, spec.device_id, where)
        if isinstance(spec, Device) and spec.netdev:
            self._netdev(directory, spec.netdev, speed_mbps=1000, port_name=None, net_type=1)
        self.devices.append(device)

    def _nic(self, spec: Nic, parent: Path, bus: int, slot: int, where: _Where) -> None:
        pci_class = CLASS_INFINIBAND if spec.link_layer == "InfiniBand" else CLASS_ETHERNET
        for function in range(spec.functions):
            address = _bdf(bus, slot, function)
            pf_dir = self._function(parent, address, spec.vendor, spec.device_id, pci_class, where.numa)
            pf = self._record("nic", address, spec.vendor, spec.device_id, where)
            pf.link_layer, pf.speed_mbps = spec.link_layer, spec.speed_gbps * 1000
            pf.sriov_total_vfs = max(8, spec.vfs)
            _write(pf_dir / "sriov_totalvfs", str(pf.sriov_total_vfs))
            _write(pf_dir / "sriov_numvfs", str(spec.vfs))
            self.devices.append(pf)
            self.pending.append(_PendingNic(spec, pf, pf_dir, function))
            for vf_index in range(spec.vfs):
                # mlx5 puts VFs after the PFs in the same slot's function space (ARI): 00.2, 00.3, ...
                devfn = slot * 8 + spec.functions + 1 + function * spec.vfs + vf_index
                vf_address = _bdf(bus, devfn >> 3, devfn & 7)
                vf_dir = self._function(parent, vf_address, spec.vendor, spec.vf_device_id, pci_class, where.numa)
                _link(vf_dir / "physfn", pf_dir)
                _link(pf_dir / f"virtfn{vf_index}", vf_dir)
                vf = self._record("vf", vf_address, spec.vendor, spec.vf_device_id, where)
                vf.link_layer, vf.speed_mbps, vf.pf = spec.link_layer, spec.speed_gbps * 1000, address
                pf.vfs.append(vf_address)
                self.devices.append(vf)
                self.pending.append(_PendingNic(spec, vf, vf_dir, function, vf_index))

    def _name_nics(self) -> None:
        # Drivers probe PFs in PCI order; VFs are created afterwards, so their RDMA names come last.
        order = sorted(self.pending, key=lambda p: (p.vf_index is not None, pci_sort_key(p.device.address)))
        next_rdma = 0
        pf_netdevs: dict[str, str] = {}
        for pending in order:
            spec, device = pending.spec, pending.device
            is_vf = pending.vf_index is not None
            if spec.rdma and (not is_vf or spec.vf_rdma):
                device.rdma = spec.rdma_name if spec.rdma_name and not is_vf else f"mlx5_{next_rdma}"
                next_rdma += 1
            netdev = _netdev_name(spec, device.address, pending.function, pending.vf_index, pf_netdevs.get(device.pf or ""))
            if not is_vf:
                pf_netdevs[device.address] = netdev
            moved = is_vf and pending.vf_index in spec.vfs_in_pods
            device.netdev = None if moved else netdev
            if device.netdev:
                net_type = 32 if spec.link_layer == "InfiniBand" else 1
                port_name = None if is_vf or net_type == 32 else f"p{pending.function}"
                self._netdev(pending.directory, device.netdev, device.speed_mbps, port_name, net_type)
            if device.rdma:
                self._rdma(pending.directory, device)
            if spec.switchdev and not is_vf:
                for vf_index in range(spec.vfs):
                    # Representors share the PF's PCI device; discovery must not take them for the uplink.
                    self._netdev(pending.directory, f"{netdev}_{vf_index}", None, f"pf{pending.function}vf{vf_index}", 1)

    # --- writers ---

    def _function(self, parent: Path, address: str, vendor: int, device_id: int, pci_class: int, numa: int) -> Path:
        directory = parent / address
        _write(directory / "vendor", f"0x{vendor:04x}")
        _write(directory / "device", f"0x{device_id:04x}")
        _write(directory / "class", f"0x{pci_class:06x}")
        _write(directory / "numa_node", str(numa))
        _link(self.root / "bus" / "pci" / "devices" / address, directory)
        return directory

    def _record(self, kind: str, address: str, vendor: int, device_id: int, where: _Where) -> BuiltDevice:
        return BuiltDevice(
            kind=kind,
            address=address,
            vendor=f"0x{vendor:04x}",
            device_id=f"0x{device_id:04x}",
            numa=where.numa,
            socket=self.server.socket_of(where.numa),
            host_bridge=where.host_bridge,
            root_port=where.root_port,
            switches=where.switches,
        )

    def _netdev(self, function_dir: Path, name: str, speed_mbps: int | None, port_name: str | None, net_type: int) -> None:
        net_dir = function_dir / "net" / name
        _write(net_dir / "type", str(net_type))
        _write(net_dir / "speed", str(speed_mbps if speed_mbps is not None else -1))
        _write(net_dir / "operstate", "up")
        _write(net_dir / "address", _mac(function_dir.name, name))
        if port_name is not None:
            _write(net_dir / "phys_port_name", port_name)
        _link(net_dir / "device", function_dir)
        _link(self.root / "class" / "net" / name, net_dir)

    def _rdma(self, function_dir: Path, device: BuiltDevice) -> None:
        assert device.rdma is not None
        ib_dir = function_dir / "infiniband" / device.rdma
        port = ib_dir / "ports" / "1"
        gbps = (device.speed_mbps or 0) // 1000
        _write(ib_dir / "node_type", "1: CA")
        _write(port / "link_layer", device.link_layer)
        _write(port / "rate", f"{gbps} Gb/sec ({IB_RATE_NAMES.get(gbps, '4X')})")
        _write(port / "state", "4: ACTIVE")
        if device.link_layer == "Ethernet" and device.netdev:
            _write(port / "gid_attrs" / "ndevs" / "0", device.netdev)
        _link(ib_dir / "device", function_dir)
        _link(self.root / "class" / "infiniband" / device.rdma, ib_dir)


def _netdev_name(spec: Nic, address: str, function: int, vf_index: int | None, pf_netdev: str | None) -> str:
    """systemd-style predictable names: enp<bus>s<slot>[f<fn>]np<port>, ibp<bus>s<slot>, <pf>v<n>."""
    if vf_index is not None:
        base = (pf_netdev or "vf").removesuffix(f"np{function}")
        return f"{base}v{vf_index}"
    if spec.netdev and spec.functions == 1:
        return spec.netdev
    _, bus, devfn = address.split(":")
    slot = int(devfn.split(".")[0], 16)
    fn = f"f{function}" if spec.functions > 1 or spec.vfs else ""
    if spec.link_layer == "InfiniBand":
        return f"ibp{int(bus, 16)}s{slot}{fn}"
    return f"enp{int(bus, 16)}s{slot}{fn}np{function}"


def _bdf(bus: int, slot: int, function: int) -> str:
    return f"{DOMAIN:04x}:{bus:02x}:{slot:02x}.{function:x}"


def _mac(address: str, name: str) -> str:
    digest = zlib.crc32(f"{address}/{name}".encode()) << 8  # deterministic across runs
    return "02:" + ":".join(f"{(digest >> shift) & 0xFF:02x}" for shift in range(32, -8, -8))


def _natural_key(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return head, int(tail) if tail else -1


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _link(link: Path, target: Path) -> None:
    """Relative symlink, as sysfs uses (so the tree can be moved or copied)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


__all__ = [
    "BuiltDevice",
    "BuiltServer",
    "Device",
    "Gpu",
    "HostBridge",
    "Nic",
    "RootPort",
    "Server",
    "Switch",
    "build",
    "build_fixture",
    "nvidia_smi_topo",
]

