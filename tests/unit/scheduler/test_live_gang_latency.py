"""What keeps a gang's last-member -> bound time short: no back-off wait once its members are all
there, no event storm while it is being created, no cycle for a bound pod's status updates."""

from __future__ import annotations

import copy
from typing import Any

from scheduler.live import objects
from scheduler.live.loop import SHORT_GANG_GRACE_S, Scheduler
from scheduler.live.metrics import Metrics
from tests.unit.scheduler.test_live_objects import cache_with, node, pod


def member(i: int) -> dict[str, Any]:
    return pod(f"m{i}", gpus=8, nics=8, metadata={"labels": {objects.POD_GROUP_LABEL: "g"}})


def world(*pods: dict[str, Any]) -> tuple[Scheduler, list[str]]:
    cache = cache_with([node(f"n{i}") for i in range(4)])
    cache.on_podgroup("ADDED", {"metadata": {"name": "g", "namespace": "ns"}, "spec": {"minMember": 3}})
    for body in pods:
        cache.on_pod("ADDED", body)
    sched = Scheduler(None, cache, Metrics(), lambda: True, dry_run=False)  # type: ignore[arg-type]
    sent: list[str] = []
    sched.events.pod = lambda pod, reason, message, warning=True: sent.append(message)  # type: ignore[method-assign]
    sched.events.on_object = lambda *a, **k: None  # type: ignore[method-assign]
    sched.binder.submit_all = lambda decisions, gang=False: None  # type: ignore[method-assign]
    sched.podgroup_status.sync = lambda cache, now: 0  # type: ignore[method-assign]
    return sched, sent


def test_a_gang_being_created_is_planned_as_its_last_member_arrives_and_says_nothing_meanwhile() -> None:
    sched, sent = world(member(0))
    assert sched.cycle() == []
    sched.cache.on_pod("ADDED", member(1))
    assert sched.cycle() == []  # retried at once (a member arrived), still short
    assert sent == []  # within the grace: no "only 2 pods exist" events
    sched.cache.on_pod("ADDED", member(2))
    decisions = sched.cycle()  # no back-off to wait out
    assert sorted(d.pod.name for d in decisions) == ["m0", "m1", "m2"]


def test_a_gang_that_stays_short_is_reported_after_the_grace() -> None:
    sched, sent = world(member(0), member(1))
    assert sched.cycle() == [] and sent == []
    sched._short_since["ns/g"] -= SHORT_GANG_GRACE_S + 0.1  # as if the grace had passed
    sched._unit_fail.clear()
    assert sched.cycle() == []
    assert sent and all(m == "gang ns/g: minMember 3 but only 2 pods exist; nothing is bound until 3 can be "
                        "placed together" for m in sent)


def test_a_bound_pods_status_updates_wake_no_cycle() -> None:
    sched, _ = world()
    cache = sched.cache
    bound = pod("b", node="n0")
    cache.on_pod("ADDED", bound)
    seen = cache.generation
    running = copy.deepcopy(bound)
    running["metadata"]["resourceVersion"] = "11"
    running["status"] = {"phase": "Running"}
    cache.on_pod("MODIFIED", running)
    assert cache.generation == seen and cache.pods["ns/b"].phase == "Running"
    relabelled = copy.deepcopy(running)
    relabelled["metadata"].update(resourceVersion="12", labels={"app": "x"})  # affinity may change
    cache.on_pod("MODIFIED", relabelled)
    assert cache.generation == seen + 1
    cache.on_pod("ADDED", pod("new"))
    assert cache.generation == seen + 2
