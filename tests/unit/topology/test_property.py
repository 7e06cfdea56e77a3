"""Property: for any random server layout, discovery finds the tiers the layout implies.

The oracle is this file's own: it walks the random ``Server`` description (host bridge, NUMA node,
socket, chain of PCIe switches above each device) and applies the tier rules documented on
``Tier``, without the fixture generator's ground truth (``BuiltServer.tier`` and friends). The
generator only writes the sysfs files. Devices are told apart by a unique PCI device id given to
each GPU and NIC card, which discovery reads back from sysfs, so the oracle needs neither the
generator's address assignment nor its ordering.

The nvidia-smi step is fed a ``nvidia-smi topo -m`` text this file writes from the oracle, in the
published layout (current drivers: ``NIC#`` columns and a NIC legend; older ones: RDMA device names
as columns), not the project's own writer.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netmanager.topology.discover import discover
from netmanager.topology.model import NodeTopology
from netmanager.topology.nvidia_smi import parse_topo_matrix
from netmanager.topology.refine import refine_with_smi
from netmanager.topology.render import tier_label
from railnet.dev.fixture_spec import (
    CLASS_NVME,
    Device,
    Endpoint,
    Gpu,
    HostBridge,
    Nic,
    RootPort,
    Server,
    Switch,
)
from railnet.dev.fixtures import build

from .tmpfs import fast_tmp_base

# Tier values, as documented in netmanager.topology.tiers.Tier.
NVLINK, SAME_SWITCH, SAME_ROOT, SAME_NUMA, SAME_SOCKET, CROSS_SOCKET = range(6)

leaves: st.SearchStrategy[Endpoint] = st.one_of(
    st.builds(Gpu),
    st.builds(Nic, vfs=st.integers(0, 2), functions=st.integers(1, 2), link_layer=st.sampled_from(["Ethernet", "InfiniBand"])),
    st.builds(Device, vendor=st.just(0x144D), device_id=st.just(0xA80A), pci_class=st.just(CLASS_NVME)),
)
# A root port's child: an endpoint, or switches nested up to a few levels, each with 1-3 children.
subtrees: st.SearchStrategy[Endpoint | Switch] = st.recursive(
    leaves, lambda inner: st.lists(inner, min_size=1, max_size=3).map(lambda kids: Switch(*kids)), max_leaves=5
)


@st.composite
def servers(draw: st.DrawFn) -> Server:
    sockets = draw(st.integers(1, 2))
    numa_per_socket = draw(st.integers(1, 2))
    numa_nodes = sockets * numa_per_socket
    port = st.one_of(subtrees.map(lambda child: RootPort(child)), leaves)  # leaves: integrated endpoints
    bridges = draw(
        st.lists(
            st.builds(HostBridge, numa=st.integers(0, numa_nodes - 1), ports=st.lists(port, min_size=1, max_size=2)),
            min_size=1,
            max_size=4,
        )
    )
    return Server(
        name="random",
        sockets=sockets,
        numa_per_socket=numa_per_socket,
        cores_per_numa=draw(st.integers(1, 2)),
        threads_per_core=draw(st.integers(1, 2)),
        host_bridges=bridges,
        nvlinks=draw(st.sampled_from([0, 0, 12])),
    )


# --- the oracle ----------------------------------------------------------------------------------


@dataclass
class Place:
    """Where a GPU or NIC card sits, read off the layout description."""

    spec: Gpu | Nic
    host_bridge: int
    numa: int
    socket: int
    switches: tuple[int, ...]  # ids of the switches above it, top first


def places(server: Server) -> list[Place]:
    """Every GPU and NIC card, each given a unique device id that discovery will report back."""
    found: list[Place] = []

    def walk(item: Endpoint | Switch, hb: int, numa: int, above: tuple[int, ...]) -> None:
        if isinstance(item, Switch):
            for child in item.children:
                walk(child, hb, numa, (*above, id(item)))
        elif isinstance(item, Gpu | Nic):
            found.append(Place(item, hb, numa, numa // server.numa_per_socket, above))

    for hb, bridge in enumerate(server.host_bridges):
        for port in bridge.ports:
            walk(port.child if isinstance(port, RootPort) else port, hb, bridge.numa, ())
    gpus = [p for p in found if isinstance(p.spec, Gpu)]
    nics = [p for p in found if isinstance(p.spec, Nic)]
    for k, place in enumerate(gpus):
        place.spec.device_id = 0x2400 + k
    for k, place in enumerate(nics):
        assert isinstance(place.spec, Nic)
        place.spec.device_id, place.spec.vf_device_id = 0x1100 + 2 * k, 0x1101 + 2 * k
    return found


def tier(a: Place, b: Place) -> int:
    if a.host_bridge == b.host_bridge:
        return SAME_SWITCH if set(a.switches) & set(b.switches) else SAME_ROOT
    if a.numa == b.numa:
        return SAME_NUMA
    return SAME_SOCKET if a.socket == b.socket else CROSS_SOCKET


def smi_label(a: Place, b: Place) -> str:
    """What nvidia-smi prints for a PCIe pair (SYS for anything across NUMA nodes)."""
    t = tier(a, b)
    if t == SAME_SWITCH:
        # PIX: at most one bridge between them, i.e. the same innermost switch; PXB: several.
        return "PIX" if a.switches[-1] == b.switches[-1] else "PXB"
    return {SAME_ROOT: "PHB", SAME_NUMA: "NODE"}.get(t, "SYS")


def smi_text(
    server: Server, gpus: list[Place], nics: list[tuple[str, Place]], legacy: bool, underline: bool
) -> str:
    """``nvidia-smi topo -m`` as drivers print it, from the oracle's places (NIC: (rdma name, place))."""
    gpu_cols = [f"GPU{i}" for i in range(len(gpus))]
    nic_cols = [name for name, _ in nics] if legacy else [f"NIC{k}" for k in range(len(nics))]
    head = "\t".join(["", *gpu_cols, *nic_cols, "CPU Affinity", "NUMA Affinity", "GPU NUMA ID"])
    lines = [f"\x1b[4m{head}\x1b[0m" if underline else head]
    devices = [("gpu", p) for p in gpus] + [("nic", p) for _, p in nics]

    def cell(a: tuple[str, Place], b: tuple[str, Place]) -> str:
        if a is b:
            return " X "
        if a[0] == b[0] == "gpu" and server.nvlinks:
            return f"NV{server.nvlinks}"
        return smi_label(a[1], b[1])

    for col, device in zip(gpu_cols + nic_cols, devices, strict=True):
        row = [col, *(cell(device, other) for other in devices)]
        numa = device[1].numa
        row += [f"{numa * 16}-{numa * 16 + 15}", str(numa), "", "N/A"] if device[0] == "gpu" else ["", "", "", ""]
        lines.append("\t".join(row))
    lines += ["", "Legend:", "", "  X    = Self", "  SYS  = Connection traversing PCIe as well as the SMP interconnect"]
    lines += ["  NV#  = Connection traversing a bonded set of # NVLinks"]
    if nics and not legacy:
        lines += ["", "NIC Legend:", ""] + [f"  NIC{k}: {name}" for k, (name, _) in enumerate(nics)]
    return "\n".join(lines) + "\n"


# --- the property --------------------------------------------------------------------------------


def _check_pcie(server: Server, topo: NodeTopology, gpus: list[Place], nics: list[Place]) -> None:
    assert topo.sockets == server.sockets
    assert topo.numa_to_socket == {n: n // server.numa_per_socket for n in range(server.numa_nodes)}
    assert [(g.numa_node, g.socket) for g in topo.gpus] == [(p.numa, p.socket) for p in gpus]
    assert [(n.numa_node, n.socket) for n in topo.nics] == [(p.numa, p.socket) for p in nics]
    assert topo.gpu_nic == [[tier(g, k) for k in nics] for g in gpus]
    # PIX vs PXB as the renderer derives it from the sysfs paths.
    for gpu, g in zip(topo.gpus, gpus, strict=True):
        for pos, (nic, k) in enumerate(zip(topo.nics, nics, strict=True)):
            expected = "SKT" if tier(g, k) == SAME_SOCKET else smi_label(g, k)
            assert tier_label(topo.gpu_nic[gpu.index][pos], gpu, nic) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(servers(), st.booleans(), st.booleans())
def test_discovered_tiers_match_the_layout(server: Server, legacy: bool, underline: bool) -> None:
    found = places(server)
    by_gpu_id = {f"0x{p.spec.device_id:04x}": p for p in found if isinstance(p.spec, Gpu)}
    by_nic_id: dict[str, Place] = {}
    for p in found:
        if isinstance(p.spec, Nic):
            by_nic_id[f"0x{p.spec.device_id:04x}"] = by_nic_id[f"0x{p.spec.vf_device_id:04x}"] = p
    with tempfile.TemporaryDirectory(prefix="railnet-topo-", dir=fast_tmp_base()) as root:
        build(server, root)
        topo = discover(root, node_name="random")

    # Every GPU once; every NIC card once per PF and once per VF (all have RDMA devices here).
    assert sorted(g.device_id for g in topo.gpus) == sorted(by_gpu_id)
    gpus = [by_gpu_id[g.device_id] for g in topo.gpus]
    nics = [by_nic_id[n.device_id] for n in topo.nics]
    for p in found:
        if isinstance(p.spec, Nic):
            listed = [n for n, q in zip(topo.nics, nics, strict=True) if q is p]
            assert len(listed) == p.spec.functions * (1 + p.spec.vfs)
            pfs = [n for n in listed if not n.is_vf]
            assert len(pfs) == p.spec.functions
            for pf in pfs:
                children = [n for n in listed if n.pf_pci_address == pf.pci_address]
                assert len(children) == p.spec.vfs and all(v.is_vf for v in children)
                assert sorted(pf.vf_pci_addresses) == sorted(v.pci_address for v in children)
            assert all(n.rdma_device and n.link_layer == p.spec.link_layer for n in listed)
            assert all(n.speed_mbps == p.spec.speed_gbps * 1000 for n in listed)

    pcie_gg = [[NVLINK if a is b else tier(a, b) for b in gpus] for a in gpus]
    assert topo.gpu_gpu == pcie_gg
    _check_pcie(server, topo, gpus, nics)

    if not gpus:
        return  # nvidia-smi prints no matrix without GPUs
    named = sorted(
        ((n.rdma_device or "", p) for n, p in zip(topo.nics, nics, strict=True)),
        key=lambda item: int(item[0].rsplit("_", 1)[1]),
    )
    text = smi_text(server, gpus, named, legacy, underline)
    refined = topo.model_copy(deep=True)  # same sysfs: only the nvidia-smi step differs
    refine_with_smi(refined, parse_topo_matrix(text))
    assert refined.warnings == []
    if server.nvlinks:
        assert refined.gpu_gpu == [[NVLINK] * len(gpus) for _ in gpus]
        assert refined.gpu_nvlinks == [[0 if a is b else server.nvlinks for b in gpus] for a in gpus]
    else:
        assert refined.gpu_gpu == pcie_gg
    _check_pcie(server, refined, gpus, nics)
