"""PodGroup status from the cache (phase and counts as scheduler-plugins' PodGroupStatus) and the
expiry of assumed pods whose bind the watch never confirms (kube-scheduler's assume cache)."""

from __future__ import annotations

import time
from typing import Any

from scheduler.live import objects
from scheduler.live.loop import Scheduler
from scheduler.live.metrics import Metrics
from scheduler.live.podgroup_status import desired
from tests.unit.scheduler.test_live_objects import cache_with, node, pod

GROUP = {"metadata": {"name": "g", "namespace": "ns", "uid": "pg"}, "spec": {"minMember": 2}}


def member(name: str, node_name: str | None = None, phase: str = "Pending", rv: str = "10") -> dict[str, Any]:
    body = pod(name, node=node_name, metadata={"labels": {objects.POD_GROUP_LABEL: "g"}, "resourceVersion": rv})
    body["status"] = {"phase": phase}
    return body


def status_of(cache: Any, group: dict[str, Any] = GROUP) -> dict[str, Any]:
    members = [cache.pods[k] for k in cache.gang_members.get("ns/g", ())]
    return desired(group, members, cache.gang_finished.get("ns/g", {}))


def test_podgroup_phase_follows_its_members() -> None:
    cache = cache_with([node("a")])
    cache.on_podgroup("ADDED", GROUP)
    for name in ("m0", "m1", "m2"):
        cache.on_pod("ADDED", member(name))
    first = status_of(cache)
    assert (first["phase"], first["scheduled"], first["running"]) == ("Pending", 0, 0)
    assert first["scheduleStartTime"]
    cache.on_pod("MODIFIED", member("m0", "a", rv="11"))
    cache.on_pod("MODIFIED", member("m1", "a", rv="11"))
    assert (status_of(cache)["phase"], status_of(cache)["scheduled"]) == ("Scheduling", 2)
    cache.on_pod("MODIFIED", member("m0", "a", "Running", rv="12"))
    cache.on_pod("MODIFIED", member("m1", "a", "Running", rv="12"))
    assert (status_of(cache)["phase"], status_of(cache)["running"]) == ("Running", 2)
    # terminal pods leave the watch (field selector) but are counted
    cache.on_pod("DELETED", member("m0", "a", "Succeeded", rv="13"))
    cache.on_pod("DELETED", member("m1", "a", "Succeeded", rv="13"))
    done = status_of(cache)
    assert (done["phase"], done["succeeded"], done["scheduled"]) == ("Finished", 2, 0)
    cache.on_pod("DELETED", member("m2", None, "Failed", rv="13"))
    assert status_of(cache)["phase"] == "Failed" and "ns/g" not in cache.gang_members


def test_counts_never_drop_below_the_stored_status() -> None:
    cache = cache_with([node("a")])
    stored = {**GROUP, "status": {"phase": "Running", "succeeded": 1, "scheduleStartTime": "2026-01-01T00:00:00Z"}}
    cache.on_pod("ADDED", member("m0", "a", "Running"))
    status = status_of(cache, stored)
    assert status["succeeded"] == 1 and status["scheduleStartTime"] == "2026-01-01T00:00:00Z"


def scheduler_with_one_assumed(ttl: float) -> Scheduler:
    cache = cache_with([node("a")])
    cache.on_pod("ADDED", pod("p", gpus=8, nics=8))
    sched = Scheduler(None, cache, Metrics(), lambda: True, dry_run=True, assume_ttl=ttl)  # type: ignore[arg-type]
    [decision] = sched.cycle()
    assert "ns/p" in cache.assumed and "ns/p" in cache.cluster.allocations
    cache.finish_binding("ns/p")
    return sched


def test_an_unconfirmed_assumption_expires_after_the_ttl_and_the_pod_is_retried() -> None:
    sched = scheduler_with_one_assumed(ttl=30.0)
    cache = sched.cache
    assert cache.expire_assumed(time.monotonic() + 5, 30.0) == []  # not yet
    assert cache.expire_assumed(time.monotonic() + 31, 30.0) == ["ns/p"]
    assert "ns/p" not in cache.assumed and "ns/p" not in cache.cluster.allocations
    assert cache.cluster.by_name["a"].whole_free.bit_count() == 8  # the devices are free again
    sched._unit_fail.clear()
    assert [d.pod.key for d in sched.cycle()] == ["ns/p"]  # decided again


def test_a_confirmed_or_unfinished_bind_never_expires() -> None:
    sched = scheduler_with_one_assumed(ttl=30.0)
    cache = sched.cache
    bound = pod("p", gpus=8, nics=8, node="a", metadata={"resourceVersion": "11"})
    cache.on_pod("MODIFIED", bound)  # the watch confirms the bind
    assert cache.expire_assumed(time.monotonic() + 60, 30.0) == []
    assert "ns/p" in cache.cluster.allocations and not cache.bound_at
    other = scheduler_with_one_assumed(ttl=30.0).cache
    other.bound_at.clear()  # bind still in flight: only finished binds expire
    assert other.expire_assumed(time.monotonic() + 60, 30.0) == [] and "ns/p" in other.assumed
    assert scheduler_with_one_assumed(ttl=0.0).cache.expire_assumed(time.monotonic() + 60, 0.0) == []
