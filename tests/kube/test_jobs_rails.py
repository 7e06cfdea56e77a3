"""`railnet controller --rail-networks`: replica pods that request the rail resource get the networks
annotation railnet's meta plugin reads (the scheduler's allocation then decides the interfaces); the
others do not; a job annotation overrides the flag; bad input is a condition; a pod another scheduler
would place is reported, not annotated."""

from __future__ import annotations

from typing import Any

from jobs import api, rails
from tests.kube import kubeutil
from tests.kube.test_jobs_support import WAIT, Jobs, job_crds, jobs, replica, tfjob

__all__ = ["job_crds", "jobs"]  # fixtures
RAILS = {"limits": {"nvidia.com/gpu": "8", "rdma/roce": "8"}}


def with_rails(replicas: int) -> dict[str, Any]:
    spec = replica("tensorflow", replicas)
    spec["template"]["spec"]["containers"][0]["resources"] = RAILS
    return spec


def networks(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("annotations") or {}).get(rails.NETWORKS)


def test_pods_with_rails_get_the_networks_annotation(jobs: Jobs) -> None:
    jobs.start("--gang-scheduling", "--rail-networks=rail")
    jobs.create(tfjob("r", PS=replica("tensorflow"), Worker=with_rails(2)))
    jobs.create(tfjob("own", annotations={rails.RAIL_NETWORKS: "team-a/rail-x@roce, rail2"}, Worker=with_rails(1)))
    jobs.create(tfjob("off", annotations={rails.RAIL_NETWORKS: ""}, Worker=with_rails(1)))
    mine = with_rails(1)
    mine["template"]["metadata"] = {"annotations": {rails.NETWORKS: "users-choice"}}
    jobs.create(tfjob("user", Worker=mine))
    jobs.create(tfjob("kube", annotations={api.GANG_ANNOTATION: "false"}, Worker=with_rails(1)))
    want = {"r-ps-0", "r-worker-0", "r-worker-1", "own-worker-0", "off-worker-0", "user-worker-0"}
    pods = kubeutil.wait_for(lambda: p if want <= set(p := jobs.pods()) else None, WAIT, "the pods")
    assert networks(pods["r-worker-0"]) == networks(pods["r-worker-1"]) == "rail"
    assert networks(pods["r-ps-0"]) is None  # no rail resource asked for
    assert networks(pods["own-worker-0"]) == "team-a/rail-x@roce, rail2"
    assert networks(pods["off-worker-0"]) is None
    assert networks(pods["user-worker-0"]) == "users-choice"
    assert pods["r-worker-0"]["spec"]["schedulerName"] == "railnet"
    # not gang-scheduled: kube-scheduler would place it and no allocation would exist; said, not annotated
    pod = kubeutil.wait_for(lambda: jobs.pods("kube-").get("kube-worker-0"), WAIT, "kube-worker-0")
    assert networks(pod) is None

    def skipped() -> dict[str, Any] | None:
        events = jobs.api.get(f"/api/v1/namespaces/{jobs.ns}/events")["items"]
        return next((e for e in events if e["reason"] == "RailNetworksSkipped"), None)

    event = kubeutil.wait_for(skipped, WAIT, "a RailNetworksSkipped event")
    assert event["involvedObject"]["name"] == "kube" and "not scheduled by railnet" in event["message"], event


def test_a_bad_rail_networks_annotation_is_a_condition_and_creates_nothing(jobs: Jobs) -> None:
    jobs.start("--rail-networks=rail")
    jobs.create(tfjob("bad", annotations={rails.RAIL_NETWORKS: "Rail_0"}, Worker=with_rails(2)))
    failed = jobs.wait_condition("TFJob", "bad", "Failed")
    assert failed["reason"] == "InvalidSpec" and rails.RAIL_NETWORKS in failed["message"], failed
    assert "[namespace/]name[@interface]" in failed["message"]
    assert not jobs.pods("bad-") and not jobs.services("bad-")
    # fixed: the condition goes and the job runs
    jobs.patch_job("TFJob", "bad", {"metadata": {"annotations": {rails.RAIL_NETWORKS: "rail"}}})
    pods = kubeutil.wait_for(lambda: p if len(p := jobs.pods("bad-")) == 2 else None, WAIT, "2 pods")
    # the pass writes the status after its creates: wait for it rather than race it
    kubeutil.wait_for(lambda: not jobs.condition("TFJob", "bad", "Failed"), WAIT, "the InvalidSpec condition gone")
    assert all(rails.NETWORKS not in (p["metadata"].get("annotations") or {}) for p in pods.values())  # no gang


def test_a_bad_rail_networks_flag_stops_the_controller(jobs: Jobs) -> None:
    proc = jobs.start("--rail-networks=Not A Name")
    assert proc.wait(30) == 2
    assert "--rail-networks" in jobs.log_text(proc)
