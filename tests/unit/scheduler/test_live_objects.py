"""Pure pieces of the live scheduler: quantities, pod/node translation, filters, gangs, the annotation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from scheduler.live import allocation, gangs, objects
from scheduler.live.cache import PodState, SchedulerCache
from scheduler.model import Allocation


def pod(name: str = "p", gpus: int = 1, nics: int = 1, node: str | None = None, **spec: Any) -> dict[str, Any]:
    meta = spec.pop("metadata", {})
    res = {"cpu": "100m", "memory": "128Mi", "nvidia.com/gpu": str(gpus), "rdma/roce": str(nics)}
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "10",
                     "creationTimestamp": "2026-01-01T00:00:00Z", **meta},
        "spec": {"schedulerName": "railnet", "containers": [{"name": "c", "resources": {"limits": res}}], **spec},
    }
    if node:
        body["spec"]["nodeName"] = node
    return body


def node(name: str, gpus: int = 8, nics: int = 8, **spec: Any) -> dict[str, Any]:
    labels = spec.pop("labels", {})
    alloc = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(gpus), "rdma/roce": str(nics)}
    return {"metadata": {"name": name, "labels": labels}, "spec": spec, "status": {"allocatable": alloc}}


def test_quantities() -> None:
    assert objects.quantity("100m") == Decimal("0.1")
    assert objects.quantity("128Mi") == 128 * 2**20
    assert objects.quantity("1e3") == 1000
    assert objects.quantity("1.5G") == Decimal("1.5e9")
    with pytest.raises(ValueError):
        objects.quantity("12XB")


def test_pod_requests_use_limits_for_extended_resources_and_init_max() -> None:
    body = pod(gpus=2, nics=2)
    body["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}]
    res = objects.pod_resources(body)
    assert (res.cpu_milli, res.memory_mib, res.gpus, res.rdma) == (2000, 1024, 2, 2)
    spec = objects.pod_spec("ns/p", res)
    assert spec.num_gpu == 2 and spec.gpu_milli == 1000 and spec.rdma_nics == 2


def test_node_resources() -> None:
    res = objects.node_resources(node("n", gpus=8, nics=4))
    assert (res.cpu_milli, res.memory_mib, res.gpus, res.rdma, res.pods) == (64000, 512 * 1024, 8, 4, 110)


def test_taints_and_tolerations() -> None:
    tainted = node("n", taints=[{"key": "gpu", "value": "h100", "effect": "NoSchedule"}])
    soft = node("n", taints=[{"key": "gpu", "effect": "PreferNoSchedule"}])
    plain = objects.constraints_of(pod())
    assert objects.node_allows(plain, tainted) == "taint"
    assert objects.node_allows(plain, soft) is None
    exact = objects.constraints_of(pod(tolerations=[{"key": "gpu", "value": "h100", "effect": "NoSchedule"}]))
    wrong = objects.constraints_of(pod(tolerations=[{"key": "gpu", "value": "a100"}]))
    exists = objects.constraints_of(pod(tolerations=[{"operator": "Exists"}]))
    assert objects.node_allows(exact, tainted) is None
    assert objects.node_allows(wrong, tainted) == "taint"
    assert objects.node_allows(exists, tainted) is None
    assert objects.node_allows(plain, node("n", unschedulable=True)) == "taint"


def test_node_selector_and_required_affinity() -> None:
    n = node("n1", labels={"zone": "a", "rank": "5"})
    assert objects.node_allows(objects.constraints_of(pod(nodeSelector={"zone": "a"})), n) is None
    assert objects.node_allows(objects.constraints_of(pod(nodeSelector={"zone": "b"})), n) == "nodeSelector"

    def aff(*terms: dict[str, Any]) -> objects.Constraints:
        affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}
        return objects.constraints_of(pod(affinity=affinity))

    assert objects.node_allows(aff({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}), n) is None
    assert objects.node_allows(aff({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}),
                               n) == "affinity"
    # terms are ORed, expressions ANDed
    either = aff({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                 {"matchExpressions": [{"key": "rank", "operator": "Gt", "values": ["3"]},
                                       {"key": "gpu", "operator": "DoesNotExist"}]})
    assert objects.node_allows(either, n) is None
    by_name = aff({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]})
    assert objects.node_allows(by_name, n) == "affinity"


def test_gang_refs() -> None:
    pg = objects.gang_of(pod(metadata={"labels": {objects.POD_GROUP_LABEL: "g1"}}))
    assert pg == objects.GangRef("ns/g1", "PodGroup", None)
    koord = objects.gang_of(pod(metadata={"annotations": {objects.KOORD_GANG_NAME: "g2",
                                                          objects.KOORD_GANG_MIN: "3",
                                                          objects.KOORD_GANG_WAIT: "30s"}}))
    assert koord == objects.GangRef("ns/g2", "koordinator", 3, 30.0)


def cache_with(nodes: list[dict[str, Any]], topology: dict[str, Any] | None = None) -> SchedulerCache:
    cache = SchedulerCache()
    cache.replace_nodes(nodes)
    if topology:
        cache.replace_topologies([topology])
    cache.rebuild()
    return cache


def test_cache_to_cluster_counts_foreign_pods_and_keeps_annotated_devices() -> None:
    from railnet.dev.kwok_topology import topology_object

    cache = cache_with([node("a"), node("b", gpus=4, nics=0)], topology_object("a"))
    a, b = cache.cluster.by_name["a"], cache.cluster.by_name["b"]
    assert a.topology.n_nics == 8 and a.gpu_model.startswith("NVIDIA H100")
    assert b.gpu_count == 4 and b.nic_count == 0  # no NodeTopology: counts only
    # a pod bound by kube-scheduler takes the highest free devices
    foreign = pod("f", gpus=2, nics=2, node="a")
    foreign["spec"]["schedulerName"] = "default-scheduler"
    cache.on_pod("ADDED", foreign)
    assert cache.cluster.allocations["ns/f"].gpus == (6, 7)
    # a railnet pod keeps what its annotation says, even where the guess sat: the guess moves
    ann = allocation.build(Allocation("ns/r", a.index, 100, 128, (6,), 1000, (6,), ((6, 6),)), "a", None)
    ours = pod("r", node="a", metadata={"annotations": {objects.ALLOCATION_ANNOTATION: ann.to_annotation()}})
    cache.on_pod("ADDED", ours)
    assert cache.cluster.allocations["ns/r"].gpus == (6,)
    assert set(cache.cluster.allocations["ns/f"].gpus) == {5, 7}
    assert a.whole_free.bit_count() == 5
    # stale events are ignored; deletion frees
    older = dict(ours, metadata={**ours["metadata"], "resourceVersion": "5"})
    older["spec"] = {k: v for k, v in ours["spec"].items() if k != "nodeName"}
    cache.on_pod("MODIFIED", older)
    assert "ns/r" in cache.cluster.allocations
    cache.on_pod("DELETED", ours)
    cache.on_pod("DELETED", foreign)
    assert a.whole_free.bit_count() == 8 and not cache.cluster.allocations


def test_rebuild_keeps_assumed_and_bound_pods() -> None:
    cache = cache_with([node("a"), node("b")])
    cache.on_pod("ADDED", pod("x", gpus=3, nics=0, node="b"))
    alloc = Allocation("ns/y", cache.cluster.by_name["a"].index, 100, 128, (0, 1), 1000, (0,))
    cache.cluster.apply(alloc)
    cache.assume([alloc])
    cache.on_node("ADDED", node("0-first"))  # shifts indices: a rebuild must remap them
    assert cache.dirty
    cache.rebuild()
    assert cache.cluster.nodes[cache.cluster.allocations["ns/y"].node].name == "a"
    assert cache.cluster.by_name["b"].whole_free.bit_count() == 5
    cache.forget("ns/y")
    assert cache.cluster.by_name["a"].whole_free.bit_count() == 8


def states(*bodies: dict[str, Any]) -> list[PodState]:
    return [PodState.of(b, "railnet", "nvidia.com/gpu", ("rdma/roce",)) for b in bodies]


def test_gang_units_and_bad_input() -> None:
    label = {"labels": {objects.POD_GROUP_LABEL: "g"}}
    members = states(*(pod(f"m{i}", metadata=label) for i in range(3)))
    single = states(pod("solo"))
    group = {"spec": {"minMember": 2, "scheduleTimeoutSeconds": 7}}
    units = gangs.collect(members + single, {p.key: p for p in members + single}, {"ns/g": group}, set())
    gang = next(u for u in units if u.gang)
    assert gang.need == 2 and gang.timeout_s == 7 and [p.name for p in gang.pods] == ["m0", "m1", "m2"]
    assert gang.core_gang().min_member == 2
    # one member already bound counts toward minMember
    units = gangs.collect(members[1:], {p.key: p for p in members}, {"ns/g": group}, {"ns/m0"})
    assert units[0].need == 1
    too_big = {"spec": {"minMember": 5}}
    units = gangs.collect(members, {p.key: p for p in members}, {"ns/g": too_big}, set())
    assert units[0].problem and "minMember 5 but only 3 pods" in units[0].problem
    units = gangs.collect(members, {p.key: p for p in members}, {}, set())
    assert units[0].problem and "not found" in units[0].problem


def test_annotation_round_trip_names_devices() -> None:
    from railnet.dev.kwok_topology import fixture_spec

    spec = fixture_spec()
    alloc = Allocation("ns/p", 0, 100, 128, (0, 1), 1000, (0, 1), ((0, 0), (1, 1)), "ns/g")
    ann = allocation.build(alloc, "node-a", spec, "ns/g")
    text = ann.to_annotation()
    back = allocation.PodAllocation.from_annotation(text)
    assert back == ann
    assert back.gpus[0].pci_address == spec["gpus"][0]["pciAddress"]
    assert back.nics[1].rdma_device == spec["nics"][1]["rdmaDevice"]
    assert [(r.rail, r.gpu, r.nic, r.tier_name) for r in back.rails] == [(0, 0, 0, "SAME_SWITCH"), (1, 1, 1, "SAME_SWITCH")]
    assert '"topologyKnown":true' in text and '"pciAddress"' in text
