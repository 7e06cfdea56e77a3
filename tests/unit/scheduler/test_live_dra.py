"""DRA in one scheduling cycle (no API server): claims resolved from the cache, devices claims hold kept
from the core, decisions assumed into the device ledger, and freed when a claim goes."""

from __future__ import annotations

from typing import Any

from railnet.dev import fixture_gpu
from railnet.dev.kwok_topology import topology_object
from scheduler.live.cache import DRA_HOLD
from scheduler.live.loop import Scheduler
from scheduler.live.metrics import Metrics
from tests.unit.scheduler.test_live_objects import cache_with, node

GPU = fixture_gpu.DRIVER


def claim(name: str, requests: list[dict[str, Any]], results: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "1"},
                            "spec": {"devices": {"requests": requests}}}
    if results:
        body["status"] = {"allocation": {"devices": {"results": results}}}
    return body


def claim_pod(name: str, claim_name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "10",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"schedulerName": "railnet", "resourceClaims": [{"name": "d", "resourceClaimName": claim_name}],
                     "containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}}


def gpus(count: int) -> list[dict[str, Any]]:
    return [{"name": "gpu", "exactly": {"deviceClassName": GPU, "count": count}}]


def scheduler(extended: bool = True) -> Scheduler:
    cache = cache_with([node("a") if extended else node("a", gpus=0, nics=0)], topology_object("a"))
    topo = fixture_gpu.topology("a")
    cache.replace_slices([fixture_gpu.gpu_slice("a", topo), fixture_gpu.nic_slice("a", topo)])
    cache.replace_classes([fixture_gpu.device_class(GPU, GPU), fixture_gpu.device_class("rdma.railnet.io", "rdma.railnet.io")])
    cache.rebuild()  # new slices mark the cluster dirty; the loop rebuilds at the start of a cycle
    return Scheduler(None, cache, Metrics(), lambda: True, dry_run=True, reserve=False)  # type: ignore[arg-type]


def test_claims_held_elsewhere_are_kept_from_the_core_and_decisions_are_assumed() -> None:
    sched = scheduler()
    cache = sched.cache
    # kube-scheduler allocated gpu-0 to a claim: the core must not hand GPU 0 out
    cache.replace_claims([claim("foreign", gpus(1), [{"request": "gpu", "driver": GPU, "pool": "a", "device": "gpu-0"}]),
                          claim("eight", gpus(8)), claim("pair", gpus(1) + [
                              {"name": "nic", "exactly": {"deviceClassName": "rdma.railnet.io"}}])])
    assert cache.cluster.allocations[DRA_HOLD + "a"].gpus == (0,)
    cache.on_pod("ADDED", claim_pod("big", "eight"))
    assert sched.cycle() == []  # 8 GPUs asked, 7 free
    cache.on_pod("ADDED", claim_pod("small", "pair"))
    cache.backoff.clear()
    [decision] = sched.cycle()
    assert decision.pod.key == "ns/small" and decision.node == "a"
    held = {r.device for r in cache.dra.assumed["uid-pair"]}
    assert "gpu-0" not in held and len(held) == 2
    assert cache.pods["ns/small"].res.gpus == 1  # the claim's GPU counts like nvidia.com/gpu
    # the claim kube-scheduler allocated goes: its GPU is free again
    cache.on_claim("DELETED", claim("foreign", gpus(1)))
    assert DRA_HOLD + "a" not in cache.cluster.allocations
    assert 0 in [i for i in range(8) if cache.cluster.nodes[0].whole_free >> i & 1]


def test_a_claim_the_controller_manager_has_not_made_yet_waits_quietly() -> None:
    sched = scheduler()
    body = claim_pod("p", "x")
    body["spec"]["resourceClaims"] = [{"name": "d", "resourceClaimTemplateName": "t"}]
    sched.cache.on_pod("ADDED", body)
    assert sched.cycle() == []
    assert not sched.cache.cluster.allocations


def test_a_node_that_advertises_no_extended_resources_is_placed_from_its_slices_and_topology() -> None:
    sched = scheduler(extended=False)
    cache = sched.cache
    assert cache.cluster.nodes[0].gpu_count == 8 and cache.cluster.nodes[0].nic_count == 8
    cache.replace_claims([claim("pair", gpus(1) + [{"name": "nic", "exactly": {"deviceClassName": "rdma.railnet.io"}}])])
    cache.on_pod("ADDED", claim_pod("p", "pair"))
    [decision] = sched.cycle()
    assert decision.node == "a" and len(cache.dra.assumed["uid-pair"]) == 2
