"""Bad input: a condition on the job that says what to fix, and nothing created for it."""

from __future__ import annotations

import subprocess
import sys

from jobs import api
from tests.kube import kubeutil
from tests.kube.test_jobs_support import REPO, Jobs, job_crds, jobs, replica, tfjob

__all__ = ["job_crds", "jobs"]  # fixtures


def test_invalid_jobs_get_a_condition_and_nothing_half_created(jobs: Jobs) -> None:
    jobs.start("--gang-scheduling")
    pinned = replica("tensorflow", 2, nodeName="kwok-node-0")
    pinned["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": 2222, "hostPort": 2222}]
    cases = {
        "unknown-type": (tfjob("unknown-type", Worker=replica("tensorflow", 2), Launcher=replica("tensorflow")),
                         "unknown replica type 'Launcher'"),
        "no-container": (tfjob("no-container", Worker=replica("main", 2)), "no container is named 'tensorflow'"),
        "same-port": (tfjob("same-port", Worker=pinned), "both pinned to node kwok-node-0 with host port 2222"),
        "bad-range": (tfjob("bad-range", annotations={api.NETWORK_MODE: "host",
                                                      api.PORT_RANGE_ANNOTATION: "40000-30000"},
                            Worker=replica("tensorflow", 2)), "must satisfy 1 <= LOW <= HIGH"),
        "bad-policy": (tfjob("bad-policy", Worker=replica("tensorflow", 1, "Sometimes")), "restartPolicy"),
    }
    for job, _ in cases.values():
        jobs.create(job)
    for name, (_, text) in cases.items():
        failed = jobs.wait_condition("TFJob", name, "Failed")
        assert failed["reason"] == "InvalidSpec" and text in failed["message"], failed
    assert not jobs.pods() and not jobs.services()
    groups = jobs.api.get(f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{jobs.ns}/podgroups")["items"]
    assert not groups
    events = jobs.api.get(f"/api/v1/namespaces/{jobs.ns}/events")["items"]
    assert any(e["reason"] == "InvalidSpec" and e["involvedObject"]["name"] == "unknown-type" for e in events)
    # fixing the spec lets the job run (the InvalidSpec condition goes away)
    jobs.patch_job("TFJob", "no-container", {"spec": {"tfReplicaSpecs": {"Worker": replica("tensorflow", 2)}}})
    kubeutil.wait_for(lambda: len(jobs.pods("no-container-")) == 2 or None, 60, "pods of the fixed job")
    kubeutil.wait_for(lambda: not jobs.condition("TFJob", "no-container", "Failed"), 60, "InvalidSpec cleared")


def test_invalid_port_range_flag_stops_the_controller_with_a_message() -> None:
    out = subprocess.run([sys.executable, "-m", "railnet.cli", "controller", "--hostnetwork-port-range=30000-20000"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--hostnetwork-port-range" in out.stderr and "LOW <= HIGH" in out.stderr
