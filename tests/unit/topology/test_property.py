"""Property: for any generated layout, discovery reproduces the generator's ground truth."""

from __future__ import annotations

import tempfile

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
from railnet.dev.fixtures import BuiltServer, build, nvidia_smi_topo

from .tmpfs import fast_tmp_base

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


def _check(built: BuiltServer, topo: NodeTopology) -> None:
    assert [g.pci_address for g in topo.gpus] == [g.address for g in built.gpus]
    assert [n.pci_address for n in topo.nics] == [n.address for n in built.nics]
    assert topo.gpu_nic == built.gpu_nic()
    assert topo.numa_to_socket == built.numa_to_socket
    assert topo.sockets == built.server.sockets
    for nic, truth in zip(topo.nics, built.nics, strict=True):
        assert (nic.is_vf, nic.pf_pci_address, nic.vf_pci_addresses) == (truth.kind == "vf", truth.pf, truth.vfs)
        assert (nic.rdma_device, nic.link_layer, nic.speed_mbps) == (truth.rdma, truth.link_layer, truth.speed_mbps)
        assert (nic.numa_node, nic.socket) == (truth.numa, truth.socket)
    # The PIX/PXB split the renderer derives from sysfs paths matches the generator's structural one.
    for gpu, g_truth in zip(topo.gpus, built.gpus, strict=True):
        for k, (nic, n_truth) in enumerate(zip(topo.nics, built.nics, strict=True)):
            label = tier_label(topo.gpu_nic[gpu.index][k], gpu, nic)
            assert label.replace("SKT", "SYS") == built.smi_label(g_truth, n_truth)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(servers())
def test_discovered_tiers_match_generated_layout(server: Server) -> None:
    with tempfile.TemporaryDirectory(prefix="railnet-topo-", dir=fast_tmp_base()) as root:
        built = build(server, root)
        topo = discover(root, node_name="random")
        _check(built, topo)
        assert topo.gpu_gpu == built.gpu_gpu_pcie()

        if not built.gpus:
            return  # nvidia-smi prints no matrix without GPUs
        refined = topo.model_copy(deep=True)  # same sysfs: only the nvidia-smi step differs
        refine_with_smi(refined, parse_topo_matrix(nvidia_smi_topo(built)))
        _check(built, refined)
        assert refined.gpu_gpu == built.gpu_gpu()
        assert refined.warnings == []
