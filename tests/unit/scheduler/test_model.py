"""Cluster model bookkeeping, the NodeTopology adapter, GPU shares, domains and views."""

from __future__ import annotations

import subprocess
import sys

import pytest

from netmanager.topology.model import Gpu, NodeTopology, RdmaNic
from scheduler.domains import DEFAULT_DOMAIN_KEYS, DomainIndex
from scheduler.gang import Gang, plan_gang, slots
from scheduler.model import Allocation, Cluster, ModelError, PodSpec, new_node
from scheduler.placement import best_fit_share, place_on_node
from scheduler.synthetic import hgx_like
from scheduler.topology import CompactTopology, Tier, from_node_topology, intern, uniform
from scheduler.view import ClusterView, commit


def cluster_of(count: int, gpus: int = 8, topology: CompactTopology | None = None) -> Cluster:
    return Cluster(new_node(i, f"n{i}", 64_000, 256_000, "A100", gpus, topology) for i in range(count))


def test_pod_spec_validation() -> None:
    with pytest.raises(ModelError, match="needs num_gpu == 1"):
        PodSpec("p", num_gpu=2, gpu_milli=500)
    with pytest.raises(ModelError, match="without num_gpu"):
        PodSpec("p", gpu_milli=500)
    with pytest.raises(ModelError, match=">= 0"):
        PodSpec("p", cpu_milli=-1)
    share = PodSpec("s", num_gpu=1, gpu_milli=300)
    assert share.shares_gpu and share.whole_gpus == 0 and share.total_gpu_milli == 300


def test_apply_release_keep_indexes_consistent() -> None:
    cluster = cluster_of(2, topology=hgx_like())
    alloc = place_on_node(cluster.nodes[0], PodSpec("w", 1000, 10, 4, 1000, rdma_nics=4))
    assert alloc is not None
    cluster.apply(alloc)
    node = cluster.nodes[0]
    assert node.whole_free.bit_count() == 4 and node.nic_free.bit_count() == 4
    assert 0 in cluster.by_whole_free[4] and 0 not in cluster.by_whole_free[8]
    assert cluster.domains.whole_free[-1][()] == 12
    assert cluster.gpu_allocated_milli == 4000
    with pytest.raises(ModelError, match="already allocated"):
        cluster.apply(alloc)
    cluster.release("w")
    assert node.whole_free == 0xFF and node.nic_free == 0xFF and cluster.gpu_allocated_milli == 0
    assert 0 in cluster.by_whole_free[8]


def test_check_names_the_problem() -> None:
    cluster = cluster_of(1, gpus=2)
    assert "GPU 5" in (cluster.check(Allocation("x", 0, 0, 0, (5,), 1000)) or "")
    assert "CPU or memory" in (cluster.check(Allocation("x", 0, 10**9, 0, (), 0)) or "")
    assert "listed twice" in (cluster.check(Allocation("x", 0, 0, 0, (0, 0), 100)) or "")


def test_gpu_shares_pack_onto_partly_used_gpus() -> None:
    cluster = cluster_of(1, gpus=2)
    first = place_on_node(cluster.nodes[0], PodSpec("a", num_gpu=1, gpu_milli=600))
    assert first is not None
    cluster.apply(first)
    second = place_on_node(cluster.nodes[0], PodSpec("b", num_gpu=1, gpu_milli=300))
    assert second is not None and second.gpus == first.gpus  # onto the partly used GPU
    cluster.apply(second)
    node = cluster.nodes[0]
    assert sorted(node.gpu_free_milli) == [100, 1000] and node.whole_free.bit_count() == 1
    assert best_fit_share(node, PodSpec("c", num_gpu=1, gpu_milli=200)) == node.gpu_free_milli.index(1000)
    assert slots(node, PodSpec("d", num_gpu=1, gpu_milli=250), 10) == 4
    cluster.release("a")
    assert sorted(node.gpu_free_milli) == [700, 1000]


def test_share_pods_with_rdma_take_the_nic_next_to_their_gpu() -> None:
    cluster = cluster_of(1, topology=hgx_like())
    alloc = place_on_node(cluster.nodes[0], PodSpec("s", num_gpu=1, gpu_milli=500, rdma_nics=1))
    assert alloc is not None and alloc.rails == ((alloc.gpus[0], alloc.nics[0]),)
    assert alloc.gpus[0] == alloc.nics[0]


def test_domains_from_labels_and_missing_labels() -> None:
    leaf, spine, zone = DEFAULT_DOMAIN_KEYS
    nodes = [
        new_node(0, "a", 1, 1, labels={leaf: "l1", spine: "s1", zone: "z"}),
        new_node(1, "b", 1, 1, labels={leaf: "l1", spine: "s1", zone: "z"}),
        new_node(2, "c", 1, 1, labels={leaf: "l2", spine: "s1", zone: "z"}),
        new_node(3, "d", 1, 1, labels={spine: "s1", zone: "z"}),
    ]
    index = DomainIndex(nodes)
    assert index.domain_of(0, 0) == ("z", "s1", "l1") and index.domain_of(0, 3) == ()
    assert index.common_level(0, 1) == 0 and index.common_level(0, 2) == 1
    assert index.common_level(3, 0) == 1  # no leaf label: a leaf of its own, same spine
    assert index.children[1][("z", "s1")] == [("z", "s1", "?d"), ("z", "s1", "l1"), ("z", "s1", "l2")]
    custom = DomainIndex(nodes, ("rack",))
    assert custom.levels == 2 and custom.level_name(1) == "cluster"


def test_view_is_copy_on_write_and_commit_is_all_or_nothing() -> None:
    cluster = cluster_of(1, gpus=2)
    view = ClusterView(cluster)
    view.reserve(Allocation("a", 0, 1000, 0, (0,), 1000))
    assert cluster.nodes[0].whole_free == 0b11 and view.node(0).whole_free == 0b10
    child = view.child()
    child.reserve(Allocation("b", 0, 1000, 0, (1,), 1000))
    assert view.node(0).whole_free == 0b10
    view.absorb(child)
    assert view.node(0).whole_free == 0
    with pytest.raises(ModelError):
        commit(cluster, [Allocation("c", 0, 0, 0, (0,), 1000), Allocation("d", 0, 0, 0, (0,), 1000)])
    assert cluster.allocations == {}  # the first one was rolled back
    view.commit()
    assert set(cluster.allocations) == {"a", "b"}


def test_gang_with_gpu_shares() -> None:
    cluster = cluster_of(2, gpus=1)
    gang = Gang("g", tuple(PodSpec(f"s{i}", num_gpu=1, gpu_milli=250) for i in range(6)))
    plan = plan_gang(ClusterView(cluster), gang)
    assert plan is not None and [a.node for a in plan.allocations].count(plan.allocations[0].node) == 4


def test_topology_interning_and_validation() -> None:
    a = intern([[0, 3], [3, 0]], [[1], [3]])
    b = intern([[0, 3], [3, 0]], [[1], [3]])
    assert a is b and a.gpu_best_nic == (1, 3) and a.nic_best_gpu == (1,)
    with pytest.raises(ValueError, match="symmetric"):
        intern([[0, 3], [2, 0]], [])
    with pytest.raises(ValueError, match="outside Tier"):
        intern([[0, 9], [9, 0]], [])
    with pytest.raises(ValueError, match="one row per GPU"):
        intern([[0]], [[1], [1]])
    assert uniform(2).gpu_gpu == ((0, Tier.CROSS_SOCKET), (Tier.CROSS_SOCKET, 0))


def test_adapter_from_the_agent_node_topology() -> None:
    def gpu(i: int) -> Gpu:
        return Gpu(
            index=i, pci_address=f"0000:{i:02x}:00.0", vendor="0x10de", device_id="0x2330",
            numa_node=i // 2, socket=0, pcie_path=[],
        )  # fmt: skip

    nic = RdmaNic(
        name="eth0", rdma_device="mlx5_0", pci_address="0000:20:00.0", link_layer="Ethernet",
        speed_mbps=200000, numa_node=0, socket=0, pcie_path=[], is_vf=False, pf_pci_address=None,
        vf_pci_addresses=[],
    )  # fmt: skip
    topology = NodeTopology(
        node_name="n1",
        sockets=1,
        numa_to_socket={0: 0, 1: 0},
        gpus=[gpu(0), gpu(1), gpu(2)],
        nics=[nic],
        gpu_gpu=[[0, 1, 3], [1, 0, 3], [3, 3, 0]],
        gpu_nic=[[1], [1], [3]],
    )
    compact = from_node_topology(topology)
    assert compact.n_gpus == 3 and compact.n_nics == 1
    assert compact.gpu_set_tier((0, 1)) == Tier.SAME_SWITCH and compact.gpu_set_tier((0, 2)) == Tier.SAME_NUMA


def test_tier_is_the_agents_and_costs_no_pydantic() -> None:
    # One Tier for agent and scheduler; importing the scheduler's topology must stay light (no
    # pydantic, no discovery code), which a fresh interpreter shows.
    code = (
        "import sys, scheduler.topology as t, netmanager.topology.tiers as a; assert t.Tier is a.Tier; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'netmanager')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "['netmanager', 'netmanager.topology', 'netmanager.topology.tiers']"
