"""ElasticQuota in the live scheduler without an API server: objects -> the core's QuotaTree, broken
subtrees cut out, admission with reasons, reclaim of whole gangs, status, and the cycle's use of it."""

from __future__ import annotations

from typing import Any

from scheduler.live import objects, quotas
from scheduler.live.cache import SchedulerCache
from scheduler.live.loop import Scheduler
from scheduler.live.metrics import Metrics
from scheduler.live.quota_status import desired
from scheduler.quota import Verdict
from tests.unit.scheduler.test_live_objects import cache_with, node, pod

GPU = "nvidia.com/gpu"


def quota(name: str, ns: str, min_gpu: int | None = None, max_gpu: int | None = None, parent: str | None = None,
          is_parent: bool = False, **spec: Any) -> dict[str, Any]:
    labels = {}
    if parent:
        labels[quotas.PARENT_LABEL] = parent
    if is_parent:
        labels[quotas.IS_PARENT_LABEL] = "true"
    body: dict[str, Any] = {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels},
                            "spec": {"min": {}, "max": {}}}
    if min_gpu is not None:
        body["spec"]["min"][GPU] = min_gpu
    if max_gpu is not None:
        body["spec"]["max"][GPU] = str(max_gpu)
    body["spec"]["min"].update(spec.get("min", {}))
    return body


def team_pod(name: str, ns: str, gpus: int = 8, node_name: str | None = None, gang: str | None = None,
             priority: int = 0) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": ns}
    if gang:
        meta["labels"] = {objects.POD_GROUP_LABEL: gang}
    body = pod(name, gpus=gpus, nics=gpus, node=node_name, metadata=meta, priority=priority)
    return body


def world(nodes: int, quota_objs: list[dict[str, Any]], *pods: dict[str, Any]) -> SchedulerCache:
    cache = cache_with([node(f"n{i}") for i in range(nodes)])
    cache.replace_quotas(quota_objs)
    for body in pods:
        cache.on_pod("ADDED", body)
    for ns_name in {(p["metadata"]["namespace"], p["metadata"]["labels"].get(objects.POD_GROUP_LABEL))
                    for p in pods if (p["metadata"].get("labels") or {}).get(objects.POD_GROUP_LABEL)}:
        cache.on_podgroup("ADDED", {"metadata": {"namespace": ns_name[0], "name": ns_name[1]},
                                    "spec": {"minMember": 1}})
    return cache


def book_for(cache: SchedulerCache, *pending: str) -> quotas.QuotaBook:
    return quotas.build(cache, [(k, [cache.pods[k]]) for k in pending])


def test_parse_and_render_quantities() -> None:
    obj = quotas.parse({"metadata": {"name": "q", "namespace": "a"},
                        "spec": {"min": {"cpu": "1500m", "memory": "2Gi", GPU: 4, "rdma/roce": "2", "pods": 9}}},
                       GPU, ("rdma/roce",))
    assert obj.min == {"cpu": 1500, "memory": 2048, GPU: 4, "rdma/roce": 2}  # pods: not accounted
    assert quotas.render(obj.min) == {"cpu": "1500m", "memory": "2048Mi", GPU: "4", "rdma/roce": "2"}
    bad = quotas.parse({"metadata": {"name": "q", "namespace": "a"}, "spec": {"max": {GPU: "lots"}}}, GPU,
                       ("rdma/roce",))
    assert bad.problem and "lots" in bad.problem


def test_namespace_without_quota_is_unconstrained_and_max_is_a_ceiling() -> None:
    cache = world(2, [quota("team-a", "a", max_gpu=8)],
                  team_pod("run", "a", node_name="n0"), team_pod("more", "a", gpus=1), team_pod("free", "b", gpus=8))
    book = book_for(cache, "a/more", "b/free")
    wait = book.admit("a/more", [cache.pods["a/more"]])
    assert wait.verdict is Verdict.WAIT
    assert wait.message == "quota team-a at max nvidia.com/gpu 8 (used 8, asks 1)"
    assert book.admit("b/free", [cache.pods["b/free"]]).verdict is Verdict.ADMIT
    small = world(2, [quota("team-a", "a", max_gpu=4)], team_pod("big", "a", gpus=8))
    never = book_for(small, "a/big").admit("a/big", [small.pods["a/big"]])
    assert never.verdict is Verdict.REJECT and "above the max of quota team-a" in never.message


def test_children_min_above_parent_breaks_only_that_subtree() -> None:
    objs = [quota("org", "x", min_gpu=8, is_parent=True), quota("kid-1", "a", min_gpu=6, parent="org"),
            quota("kid-2", "b", min_gpu=6, parent="org"), quota("other", "c", min_gpu=4)]
    cache = world(2, objs, team_pod("p", "a", gpus=1), team_pod("q", "c", gpus=1))
    book = book_for(cache, "a/p", "c/q")
    assert set(book.broken) == {"org", "kid-1", "kid-2"}
    assert "children's min for nvidia.com/gpu sum to 12, above its min (8)" in book.broken["org"]
    assert book.broken["kid-1"] == "parent quota org is invalid"
    wait = book.admit("a/p", [cache.pods["a/p"]])
    assert wait.verdict is Verdict.WAIT and wait.message.startswith("quota kid-1 is invalid: parent quota org")
    assert book.admit("c/q", [cache.pods["c/q"]]).verdict is Verdict.ADMIT  # the rest still works
    status = desired(book, cache.quotas["x/org"], book.runtime())
    assert status["conditions"][0]["status"] == "False" and "sum to 12" in status["conditions"][0]["message"]


def test_parent_quota_cannot_hold_pods_and_pod_label_names_its_quota() -> None:
    objs = [quota("org", "x", min_gpu=8, is_parent=True), quota("kid", "a", min_gpu=8, parent="org")]
    labelled = team_pod("p", "z", gpus=1)
    labelled["metadata"]["labels"] = {objects.QUOTA_NAME_LABEL: "org"}
    cache = world(2, objs, labelled, team_pod("k", "a", gpus=1))
    book = book_for(cache, "z/p", "a/k")
    assert book.admit("z/p", [cache.pods["z/p"]]).verdict is Verdict.REJECT
    assert book.admit("a/k", [cache.pods["a/k"]]).verdict is Verdict.ADMIT


def test_borrower_gangs_are_reclaimed_lowest_priority_first_and_status_shows_use() -> None:
    # 2 nodes x 8 GPUs; team-b (min 8) borrowed everything with two 1-pod gangs; team-a (min 8) asks back.
    objs = [quota("team-a", "a", min_gpu=8, max_gpu=16), quota("team-b", "b", min_gpu=8, max_gpu=16)]
    cache = world(2, objs, team_pod("low-0", "b", node_name="n0", gang="low", priority=1),
                  team_pod("high-0", "b", node_name="n1", gang="high", priority=5),
                  team_pod("want", "a", gpus=8))
    book = book_for(cache, "a/want")
    admission = book.admit("a/want", [cache.pods["a/want"]])
    assert admission.verdict is Verdict.RECLAIM and admission.victims == ("b/low",)
    assert book.job_pods["b/low"] == ["b/low-0"]
    status = desired(book, cache.quotas["b/team-b"], book.runtime())
    assert status["used"][GPU] == "16" and status["runtime"][GPU] == "8"
    # once the victim is being deleted it no longer counts: no second victim is chosen
    evicted = team_pod("low-0", "b", node_name="n0", gang="low", priority=1)
    evicted["metadata"].update(resourceVersion="11", deletionTimestamp="2026-01-01T00:00:01Z")
    cache.on_pod("MODIFIED", evicted)
    assert book_for(cache, "a/want").admit("a/want", [cache.pods["a/want"]]).verdict is Verdict.ADMIT


def test_cycle_admits_through_quota_and_reports_the_wait() -> None:
    cache = world(2, [quota("team-a", "a", max_gpu=8)], *(team_pod(f"p{i}", "a", gpus=4) for i in range(3)))
    sched = Scheduler(None, cache, Metrics(), lambda: True, dry_run=True)  # type: ignore[arg-type]
    decisions = sched.cycle()
    assert len(decisions) == 2  # 8 of the 16 free GPUs: team-a's max
    assert sched.cycle() == []
    [(key, _)] = [(k, v) for k, v in sched._unit_fail.items()]
    assert key not in {d.pod.key for d in decisions}


def test_hierarchy_borrowing_inside_a_parent_is_reclaimed_for_a_sibling() -> None:
    objs = [quota("org", "x", min_gpu=16, max_gpu=16, is_parent=True),
            quota("kid-1", "a", min_gpu=8, parent="org"), quota("kid-2", "b", min_gpu=8, parent="org")]
    cache = world(2, objs, team_pod("lo-0", "a", node_name="n0", gang="lo", priority=1),
                  team_pod("hi-0", "a", node_name="n1", gang="hi", priority=9), team_pod("back", "b", gpus=8))
    book = book_for(cache, "b/back")
    assert book.used("org") == {"cpu": 200, "memory": 256, GPU: 16, "rdma/roce": 16}  # children roll up
    admission = book.admit("b/back", [cache.pods["b/back"]])
    assert admission.verdict is Verdict.RECLAIM and admission.victims == ("a/lo",)
    assert book.runtime()["kid-1"][GPU] == 8 and book.runtime()["kid-2"][GPU] == 8
