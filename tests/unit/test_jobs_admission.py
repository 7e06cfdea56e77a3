"""Queue admission (jobs/admission.py): the pure plan over the scheduler's quota tree, and the
Admission caches + ledger on literal JSON."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobs import admission, api
from jobs.admission import Entry, plan
from scheduler.live import quotas
from scheduler.live.cache import PodState

GPU, RDMA = "nvidia.com/gpu", ("rdma/roce",)


def quota(name: str, ns: str, low: int | None = None, high: int | None = None, **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if low is not None:
        spec["min"] = {GPU: str(low)}
    if high is not None:
        spec["max"] = {GPU: str(high)}
    return {"metadata": {"name": name, "namespace": ns, "uid": name, "labels": labels}, "spec": spec}


def objs(*items: dict[str, Any]) -> dict[str, quotas.QuotaObject]:
    return quotas.parse_all(items, GPU, RDMA)


def entry(name: str, ns: str, gpus: int, priority: int = 0, created: str = "", quota_name: str | None = None) -> Entry:
    labels = {quotas.QUOTA_NAME_LABEL: quota_name} if quota_name else {}
    pod = PodState.of({"metadata": {"namespace": ns, "name": f"{name}-worker-0", "labels": labels},
                       "spec": {"containers": [{"name": "c", "resources": {"limits": {GPU: str(gpus)}}}]}}, "", GPU, RDMA)
    return Entry(f"TFJob.{api.KUBEDL}/{ns}/{name}", quota_name or f"team-{ns}", {GPU: gpus} if gpus else {}, priority,
                 created or f"2026-01-01T00:00:{len(name):02d}Z", pod)


CAPACITY = {GPU: 32, "cpu": 10**6, "memory": 10**6, RDMA[0]: 32}


def admitted(out: dict[str, admission.Outcome]) -> set[str]:
    return {k.split("/")[-1] for k, o in out.items() if o.admit}


def test_fifo_until_the_max_then_the_reason() -> None:
    q = objs(quota("team-a", "a", 8, 16))
    jobs = [entry(n, "a", 8, created=f"2026-01-01T00:00:0{i}Z") for i, n in enumerate(["j1", "j2", "j3"])]
    out = plan(q, CAPACITY, [], jobs, GPU, RDMA)
    assert admitted(out) == {"j1", "j2"}
    assert out[jobs[2].key].message.startswith("waiting for quota team-a at max nvidia.com/gpu 16 (used 16, asks 8)")
    # admitted jobs hold their request: with j1 admitted, only one more fits
    out = plan(q, CAPACITY, [jobs[0]], jobs[1:], GPU, RDMA)
    assert admitted(out) == {"j2"}


def test_priority_before_fifo() -> None:
    q = objs(quota("team-a", "a", 8, 8))
    old = entry("old", "a", 8, created="2026-01-01T00:00:00Z")
    urgent = entry("urgent", "a", 8, priority=1000, created="2026-01-01T00:05:00Z")
    assert admitted(plan(q, CAPACITY, [], [old, urgent], GPU, RDMA)) == {"urgent"}


def test_strict_within_a_quota_independent_across_quotas() -> None:
    q = objs(quota("team-a", "a", 8, 8), quota("team-b", "b", 8, 8))
    big, small = entry("big", "a", 8, created="2026-01-01T00:00:01Z"), entry("small", "a", 1, created="2026-01-01T00:00:02Z")
    running = entry("running", "a", 4)
    other = entry("other", "b", 8)
    out = plan(q, CAPACITY, [running], [big, small, other], GPU, RDMA)
    assert admitted(out) == {"other"}  # small does not overtake big in team-a; team-b is not blocked
    assert out[small.key].message == "queued behind big in quota team-a"


def test_a_job_above_the_max_never_fits_and_blocks_nobody() -> None:
    q = objs(quota("team-a", "a", 8, 8))
    huge, fine = entry("huge", "a", 9, created="2026-01-01T00:00:01Z"), entry("fine", "a", 8, created="2026-01-01T00:00:02Z")
    out = plan(q, CAPACITY, [], [huge, fine], GPU, RDMA)
    assert admitted(out) == {"fine"}
    assert out[huge.key].never and "above the max of quota team-a" in out[huge.key].message
    assert "can never be admitted" in out[huge.key].message


def test_borrowing_up_to_max_and_lending_back_through_reclaim() -> None:
    q = objs(quota("team-a", "a", 16, 32), quota("team-b", "b", 16, 32))
    greedy = entry("greedy", "a", 32)
    assert admitted(plan(q, CAPACITY, [], [greedy], GPU, RDMA)) == {"greedy"}  # b is idle: a borrows its min
    back = entry("back", "b", 16)
    out = plan(q, CAPACITY, [greedy], [back], GPU, RDMA)  # b's min is guaranteed: admitted, the scheduler reclaims
    assert admitted(out) == {"back"} and "reclaims" in out[back.key].message
    more = entry("more", "b", 17)  # beyond b's min while a uses its share: waits
    out = plan(q, CAPACITY, [greedy], [more], GPU, RDMA)
    assert not admitted(out)
    assert out[more.key].message == ("waiting for cluster capacity for quota-governed pods at nvidia.com/gpu 32 "
                                     "(used 32, asks 17)")


def test_ungoverned_missing_and_broken_quotas() -> None:
    q = objs(quota("team-a", "a", 8, 4))  # min above max: invalid
    free = entry("free", "x", 8)  # no quota in namespace x
    broken = entry("b", "a", 1)
    ghost = entry("g", "z", 1, quota_name="no-such-quota")
    out = plan(q, CAPACITY, [], [free, broken, ghost], GPU, RDMA)
    assert out[free.key].admit
    assert not out[broken.key].admit and "quota team-a is invalid" in out[broken.key].message
    assert not out[ghost.key].admit and "quota no-such-quota does not exist" in out[ghost.key].message


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 12), st.integers(0, 2)), max_size=12),
       st.integers(0, 16), st.integers(0, 16), st.integers(8, 40))
def test_admitted_never_exceed_a_max_and_each_queue_admits_a_prefix(
        jobs: list[tuple[str, int, int]], max_a: int, max_b: int, capacity: int) -> None:
    q = objs(quota("qa", "a", min(4, max_a), max_a), quota("qb", "b", min(4, max_b), max_b))
    entries = [entry(f"j{i}", ns, gpus, priority=prio, created=f"2026-01-01T00:{i:02d}:00Z", quota_name=f"q{ns}")
               for i, (ns, gpus, prio) in enumerate(jobs)]
    out = plan(q, {**CAPACITY, GPU: capacity}, [], entries, GPU, RDMA)
    for ns, high in (("a", max_a), ("b", max_b)):
        mine = sorted((e for e in entries if e.quota == f"q{ns}"), key=admission.order)
        assert sum(e.request.get(GPU, 0) for e in mine if out[e.key].admit) <= high
        considered = [e for e in mine if not out[e.key].never]
        flags = [out[e.key].admit for e in considered]
        assert flags == sorted(flags, reverse=True), flags  # admitted ones come first: strict order
    if not any("reclaims" in o.message for o in out.values()):
        assert sum(e.request.get(GPU, 0) for e in entries if out[e.key].admit) <= capacity


# -- the Admission object: caches, states, ledger ----------------------------------------------------------


def tfjob(name: str, ns: str, gpus: int, state: str | None, suspend: bool = True, rv: str = "1",
          done: bool = False) -> dict[str, Any]:
    ann = {admission.STATE: state} if state else {}
    template = {"spec": {"containers": [{"name": "tensorflow", "resources": {"limits": {GPU: str(gpus)}}}]}}
    obj: dict[str, Any] = {"apiVersion": f"{api.KUBEDL}/v1alpha1", "kind": "TFJob",
                           "metadata": {"name": name, "namespace": ns, "uid": name, "resourceVersion": rv,
                                        "annotations": ann, "creationTimestamp": f"2026-01-01T00:00:{len(name):02d}Z"},
                           "spec": {"suspend": suspend, "tfReplicaSpecs": {"Worker": {"replicas": 1, "template": template}}}}
    if done:
        obj["status"] = {"conditions": [{"type": "Succeeded", "status": "True"}]}
    return obj


def node(name: str, gpus: int) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"allocatable": {"cpu": "64", "memory": "512Gi", GPU: str(gpus),
                                                                   "rdma/roce": str(gpus)}}}


def test_admission_counts_admitted_jobs_the_ledger_and_not_finished_ones() -> None:
    world: list[dict[str, Any]] = [tfjob("ran", "a", 8, admission.ADMITTED, suspend=False),
                                   tfjob("done", "a", 8, admission.ADMITTED, suspend=False, done=True),
                                   tfjob("q1", "a", 8, admission.QUEUED), tfjob("q2", "a", 8, admission.QUEUED)]
    kicked: list[str] = []
    adm = admission.Admission(lambda: world, kicked.append)
    adm.replace_nodes([node("n1", 16), node("n2", 16)])
    adm.replace_quotas([quota("team-a", "a", 8, 16)])
    assert len(kicked) == 2  # a quota change looks at every queued job again
    assert adm.decide(admission._job_key(world[2])).admit  # 8 used by "ran" ("done" holds nothing)
    # q1 is in the ledger (the cache has not shown its patch yet): q2 does not fit beside it
    outcome = adm.decide(admission._job_key(world[3]))
    assert not outcome.admit and "at max nvidia.com/gpu 16 (used 16, asks 8)" in outcome.message
    adm.forget(admission._job_key(world[2]))  # that patch failed after all: q1, still queued, goes first again
    outcome = adm.decide(admission._job_key(world[3]))
    assert not outcome.admit and "(used 16, asks 8)" in outcome.message
    # a user-suspended admitted job holds nothing: both fit now
    world[0]["spec"]["suspend"] = True
    world[0]["metadata"]["resourceVersion"] = "2"
    assert adm.decide(admission._job_key(world[3])).admit


def test_priority_classes_order_the_queue() -> None:
    low, high = tfjob("low", "a", 8, admission.QUEUED), tfjob("high-later", "a", 8, admission.QUEUED)
    high["spec"]["schedulingPolicy"] = {"priorityClass": "urgent"}
    adm = admission.Admission(lambda: [low, high], lambda _: None)
    adm.replace_nodes([node("n1", 8)])
    adm.replace_quotas([quota("team-a", "a", 8, 8)])
    adm.replace_priorities([{"metadata": {"name": "urgent"}, "value": 1000}])
    assert not adm.decide(admission._job_key(low)).admit
    assert adm.decide(admission._job_key(high)).admit
    assert admission.suspend_patch(api.KUBEFLOW, False) == {"spec": {"runPolicy": {"suspend": False}}}
    assert admission.suspend_patch(api.KUBEDL, True) == {"spec": {"suspend": True}}
