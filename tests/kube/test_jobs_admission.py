"""`railnet controller --admission quota` against the real API server: jobs an ElasticQuota governs
wait suspended with condition Queuing until the quota admits them, in priority then FIFO order;
a job its user suspended stays suspended; finishing or suspending an admitted job lets the next in.
Pods are placed by kube-scheduler on the dev cluster's kwok nodes (8 GPUs each) and ended by patching
their status."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobs import admission, api
from tests.kube import kubeutil
from tests.kube.test_jobs_support import WAIT, Jobs, job_crds, jobs, replica, tfjob

__all__ = ["job_crds", "jobs"]  # fixtures
EQ = "/apis/scheduling.x-k8s.io/v1alpha1"
GPU = "nvidia.com/gpu"


@pytest.fixture
def quota_crd(dyn: Any) -> None:
    kubeutil.apply(dyn, kubeutil.load([kubeutil.DEPLOY / "scheduler" / "crds" / "elasticquotas.scheduling.x-k8s.io.yaml"]))


@pytest.fixture
def urgent(jobs: Jobs) -> Iterator[str]:
    """A PriorityClass of this test (cluster-scoped: deleted afterwards)."""
    name = f"urgent-{uuid.uuid4().hex[:6]}"
    status, answer = jobs.api.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", {
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": 1000})
    assert status == 201, answer
    yield name
    jobs.api.request("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}")


def workers(gpus: int, count: int = 2) -> dict[str, Any]:
    spec = replica("tensorflow", count)
    spec["template"]["spec"]["containers"][0]["resources"] = {"limits": {GPU: str(gpus), "cpu": "100m"}}
    return spec


def make_quota(jobs: Jobs, low: int, high: int) -> None:
    body = {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "ElasticQuota",
            "metadata": {"name": f"q-{jobs.ns}"}, "spec": {"min": {GPU: str(low)}, "max": {GPU: str(high)}}}
    status, answer = jobs.api.request("POST", f"{EQ}/namespaces/{jobs.ns}/elasticquotas", body)
    assert status == 201, answer


def queuing(jobs: Jobs, name: str, group: str = api.KUBEDL) -> dict[str, Any] | None:
    job = jobs.job("TFJob", name, group)
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == "Queuing"), None)


def suspended(job: dict[str, Any]) -> bool:
    spec = job["spec"]
    return bool((spec.get("runPolicy") or {}).get("suspend", spec.get("suspend")))


def state(job: dict[str, Any]) -> str | None:
    return (job["metadata"].get("annotations") or {}).get(admission.STATE)


def running_jobs(jobs: Jobs) -> set[str]:
    return {p["metadata"]["labels"].get("job-name") or p["metadata"]["labels"].get("training.kubeflow.org/job-name")
            for p in jobs.pods().values()}


def test_quota_admits_in_priority_then_fifo_order(jobs: Jobs, quota_crd: None, urgent: str) -> None:
    quota = f"q-{jobs.ns}"
    make_quota(jobs, 8, 16)
    jobs.start("--admission=quota")
    jobs.create(tfjob("mine", run={"suspend": True}, Worker=workers(4)))  # suspended by its user
    for name in ("j1", "j2"):
        jobs.create(tfjob(name, Worker=workers(4)))  # 8 GPUs each: both fit max 16
    kubeutil.wait_for(lambda: {"j1", "j2"} <= running_jobs(jobs) or None, WAIT, "j1 and j2 admitted")
    jobs.create(tfjob("j3", group=api.KUBEFLOW, Worker=workers(4)))  # kubeflow.org: runPolicy.suspend
    late = tfjob("j4", Worker=workers(4))
    late["spec"]["schedulingPolicy"] = {"priorityClass": urgent}
    jobs.create(late)
    for name, group in (("j3", api.KUBEFLOW), ("j4", api.KUBEDL)):
        cond = kubeutil.wait_for(lambda n=name, g=group: (c := queuing(jobs, n, g)) and c["status"] == "True"
                                 and c["message"].startswith(("waiting", "queued behind")) and c, WAIT, f"{name} Queuing")
        assert cond["reason"] == "JobEnqueued", cond
        assert f"quota {quota} at max {GPU} 16 (used 16, asks 8)" in cond["message"] or \
            f"behind j4 in quota {quota}" in cond["message"], cond
        job = jobs.job("TFJob", name, group)
        assert suspended(job) and state(job) == admission.QUEUED
    assert jobs.job("TFJob", "j3", api.KUBEFLOW)["spec"]["runPolicy"]["suspend"] is True
    assert not jobs.pods("j3-") and not jobs.pods("j4-")
    # the user's own suspended job is not the queue's: no annotation, no Queuing, no pods
    mine = jobs.job("TFJob", "mine")
    assert suspended(mine) and state(mine) is None and queuing(jobs, "mine") is None and not jobs.pods("mine-")
    # j1 finishes: j4 (higher priority, created later) goes before j3
    jobs.wait_running({"j1-worker-0", "j1-worker-1"})
    jobs.end_pod("j1-worker-0", "Succeeded")
    jobs.wait_condition("TFJob", "j1", "Succeeded")
    kubeutil.wait_for(lambda: "j4" in running_jobs(jobs) or None, WAIT, "j4 admitted")
    admitted = queuing(jobs, "j4")
    assert admitted is not None and (admitted["status"], admitted["reason"]) == ("False", "JobAdmitted"), admitted
    j4 = jobs.job("TFJob", "j4")
    assert not suspended(j4) and state(j4) == admission.ADMITTED
    assert not jobs.pods("j3-") and suspended(jobs.job("TFJob", "j3", api.KUBEFLOW))
    # the user suspends j2 (admitted, running): it stays suspended, leaves the queue, and j3 gets its place
    jobs.patch_job("TFJob", "j2", {"spec": {"suspend": True}})
    kubeutil.wait_for(lambda: "j3" in running_jobs(jobs) or None, WAIT, "j3 admitted")
    j2 = jobs.job("TFJob", "j2")
    assert suspended(j2) and state(j2) is None
    kubeutil.wait_for(lambda: not jobs.pods("j2-") or None, WAIT, "j2's pods gone")
    assert jobs.job("TFJob", "j3", api.KUBEFLOW)["spec"]["runPolicy"]["suspend"] is False
    events = jobs.api.get(f"/api/v1/namespaces/{jobs.ns}/events")["items"]
    assert {"Enqueued", "Admitted"} <= {e["reason"] for e in events}
    # resuming j2 queues it again (16 of 16 are held by j3 and j4)
    jobs.patch_job("TFJob", "j2", {"spec": {"suspend": False}})
    cond = kubeutil.wait_for(lambda: (c := queuing(jobs, "j2")) and "used 16" in c["message"] and c, WAIT,
                             "j2 queued, waiting")
    assert cond["status"] == "True" and "(used 16, asks 8)" in cond["message"], cond
    assert suspended(jobs.job("TFJob", "j2")) and not jobs.pods("j2-")


def test_a_job_above_the_max_is_inadmissible_and_blocks_nobody(jobs: Jobs, quota_crd: None) -> None:
    make_quota(jobs, 4, 8)
    jobs.start("--admission=quota")
    jobs.create(tfjob("huge", Worker=workers(8, 2)))  # 16 GPUs > max 8
    jobs.create(tfjob("small", Worker=workers(2, 2)))
    kubeutil.wait_for(lambda: "small" in running_jobs(jobs) or None, WAIT, "small admitted")

    def inadmissible() -> dict[str, Any] | None:
        events = jobs.api.get(f"/api/v1/namespaces/{jobs.ns}/events")["items"]
        return next((e for e in events if e["reason"] == "Inadmissible"), None)

    event = kubeutil.wait_for(inadmissible, WAIT, "an Inadmissible event")
    assert event["involvedObject"]["name"] == "huge" and "above the max" in event["message"], event
    assert "can never be admitted" in event["message"] and not jobs.pods("huge-")
    # a template naming a quota that does not exist waits and says so
    lost = workers(1, 1)
    lost["template"]["metadata"] = {"labels": {"quota.scheduling.koordinator.sh/name": "no-such-quota"}}
    jobs.create(tfjob("lost", Worker=lost))
    cond = kubeutil.wait_for(lambda: (c := queuing(jobs, "lost")) and "does not exist" in c["message"] and c, WAIT,
                             "lost queued")
    assert cond["message"] == "waiting for quota no-such-quota does not exist" and not jobs.pods("lost-"), cond


def test_jobs_without_a_quota_run_at_once(jobs: Jobs) -> None:
    jobs.start("--admission=quota")
    jobs.create(tfjob("free", Worker=workers(1, 1)))
    jobs.wait_running({"free-worker-0"})
    job = jobs.job("TFJob", "free")
    assert state(job) is None and queuing(jobs, "free") is None
