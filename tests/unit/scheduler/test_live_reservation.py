"""Head-of-line reservation without an API server: the head gang holds the freest nodes, later pods
backfill only elsewhere, the gang is placed once its nodes drain, and a holder that waits too long
lets go."""

from __future__ import annotations

import time
from typing import Any

from scheduler.gang import Gang
from scheduler.live import objects, reservation
from scheduler.live.loop import Scheduler
from scheduler.live.metrics import Metrics
from scheduler.model import PodSpec
from tests.unit.scheduler.test_live_objects import cache_with, node, pod


def at(second: int, **meta: Any) -> dict[str, Any]:
    return {"creationTimestamp": f"2026-01-01T00:00:{second:02d}Z", **meta}


def world(reserve: bool = True, hold_s: float = 300.0) -> Scheduler:
    cache = cache_with([node("n0"), node("n1"), node("n2")])
    for i in range(3):  # one small running pod per node: every node is fragmented
        cache.on_pod("ADDED", pod(f"old{i}", node=f"n{i}", metadata=at(0)))
    cache.on_podgroup("ADDED", {"metadata": {"name": "big", "namespace": "ns"}, "spec": {"minMember": 2}})
    for i in range(2):
        cache.on_pod("ADDED", pod(f"big{i}", gpus=8, nics=8,
                                  metadata=at(1, labels={objects.POD_GROUP_LABEL: "big"})))
    return Scheduler(None, cache, Metrics(), lambda: True, dry_run=True, reserve=reserve,  # type: ignore[arg-type]
                     hold_s=hold_s)


def test_choose_nodes_takes_the_freest_that_fit_when_empty() -> None:
    cache = cache_with([node("a"), node("b"), node("c", gpus=4, nics=4)])
    cache.on_pod("ADDED", pod("x", gpus=3, nics=3, node="a"))
    gang = Gang("g", (PodSpec("m0", 100, 128, 8, 1000, rdma_nics=8), PodSpec("m1", 100, 128, 4, 1000, rdma_nics=4)))
    assert reservation.choose_nodes(cache.cluster, gang, []) == frozenset({"a", "b"})  # b (free) first, then a; c is too small for 8
    assert reservation.choose_nodes(cache.cluster, gang, [0]) == frozenset({"b", "c"})  # c is big enough for the 4-GPU one
    assert reservation.choose_nodes(cache.cluster, gang, [0, 1]) is None  # c alone cannot hold the 8-GPU member


def test_head_gang_reserves_later_pods_backfill_elsewhere_then_it_is_placed() -> None:
    sched = world()
    cache = sched.cache
    assert sched.cycle() == []
    held = sched.reservation
    assert held is not None and held.key == "ns/big" and len(held.nodes) == 2
    free_node = ({"n0", "n1", "n2"} - held.nodes).pop()
    for i in range(3):  # later 1-GPU pods: only the unreserved node takes them
        cache.on_pod("ADDED", pod(f"late{i}", metadata=at(2)))
    decisions = sched.cycle()
    assert len(decisions) == 3 and {d.node for d in decisions} == {free_node}
    for name in held.nodes:  # the reserved nodes drain
        cache.on_pod("DELETED", pod(f"old{name[1]}", node=name))
    placed = sched.cycle()
    assert {d.pod.key for d in placed} == {"ns/big0", "ns/big1"} and {d.node for d in placed} == held.nodes
    assert sched.reservation is None


def test_without_reservation_small_pods_overtake() -> None:
    sched = world(reserve=False)
    sched.cycle()
    assert sched.reservation is None
    for i in range(3):
        sched.cache.on_pod("ADDED", pod(f"late{i}", metadata=at(2)))
    assert len({d.node for d in sched.cycle()}) >= 1  # placed anywhere, fragmenting further


def test_a_holder_that_waits_too_long_lets_go_and_may_not_reserve_again_at_once() -> None:
    sched = world(hold_s=0.05)
    sched.cycle()
    assert sched.reservation is not None
    time.sleep(0.1)
    sched._unit_fail.clear()
    sched.cycle()  # held longer than allowed: dropped, and not taken again for as long
    assert sched.reservation is None and sched._no_reserve["ns/big"] > 0
