"""One scheduling cycle on a cache fed with literal JSON (no API server): decisions, filters, reasons."""

from __future__ import annotations

import json
from typing import Any

from scheduler.gang import Gang
from scheduler.live import explain, objects
from scheduler.live.loop import Scheduler
from scheduler.live.metrics import Metrics
from scheduler.model import PodSpec
from scheduler.view import ClusterView
from tests.unit.scheduler.test_live_objects import cache_with, node, pod


def scheduler(nodes: list[dict[str, Any]], *pods: dict[str, Any]) -> Scheduler:
    from railnet.dev.kwok_topology import topology_object

    cache = cache_with(nodes, topology_object(nodes[0]["metadata"]["name"]))
    for body in pods:
        cache.on_pod("ADDED", body)
    return Scheduler(None, cache, Metrics(), lambda: True, dry_run=True)  # type: ignore[arg-type]


def test_cycle_places_pods_with_paired_nics_and_honours_taints() -> None:
    tainted = node("b", taints=[{"key": "k", "effect": "NoSchedule"}])
    sched = scheduler([node("a"), tainted], *(pod(f"p{i}", gpus=2, nics=2) for i in range(5)))
    decisions = sched.cycle()
    assert len(decisions) == 4 and {d.node for d in decisions} == {"a"}  # 4 x 2 GPUs fill "a"; b is tainted
    used = [(g["index"]) for d in decisions for g in json.loads(d.annotation)["gpus"]]
    assert sorted(used) == list(range(8))  # nothing double-booked
    for d in decisions:
        rails = json.loads(d.annotation)["rails"]
        assert len(rails) == 2 and all(r["tierName"] == "SAME_SWITCH" for r in rails)
    assert sched.cycle() == []  # the fifth waits; assumed pods are not decided again


def test_gang_is_all_or_nothing_and_says_who_does_not_fit() -> None:
    label = {"labels": {objects.POD_GROUP_LABEL: "g"}}
    members = [pod(f"w{i}", gpus=4, nics=4, metadata=label) for i in range(3)]
    sched = scheduler([node("a")], *members)
    sched.cache.on_podgroup("ADDED", {"metadata": {"name": "g", "namespace": "ns"}, "spec": {"minMember": 3}})
    assert sched.cycle() == []
    assert not sched.cache.cluster.allocations  # nothing held
    view = ClusterView(sched.cache.cluster)
    gang = Gang("ns/g", tuple(PodSpec(f"ns/w{i}", 100, 128, 4, 1000, rdma_nics=4) for i in range(3)), 3)
    message = explain.gang_reason(view, gang, [], {})
    assert message.startswith("gang ns/g: 2 of 3 members fit; member ns/w2: no node has 4 free nvidia.com/gpu")


def test_reason_for_a_pod_larger_than_any_node() -> None:
    sched = scheduler([node("a"), node("b", taints=[{"key": "k", "effect": "NoExecute"}])])
    view = ClusterView(sched.cache.cluster)
    blocked, reasons = sched.cache.excluded(objects.constraints_of(pod()))
    for index in blocked:
        view.block(index)
    big = PodSpec("ns/big", 100, 128, 16, 1000, rdma_nics=1)
    message = explain.pod_reason(view, big, blocked, reasons)
    assert message == "no node has 16 nvidia.com/gpu (the largest has 8); excluded: 1 by taint"
