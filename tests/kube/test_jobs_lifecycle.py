"""`railnet controller` against the real API server with kwok nodes: the anchors' examples, every
restart policy, deadlines, TTL, suspend and gangs. Pods are ended by patching their status."""

from __future__ import annotations

import datetime
import time
from typing import Any

from jobs import api
from tests.kube import kubeutil
from tests.kube.test_jobs_support import WAIT, Jobs, job_crds, jobs, replica, tf_config, tfjob

__all__ = ["job_crds", "jobs"]  # fixtures
EXAMPLES = kubeutil.REPO / "docs" / "jobs"  # outside deploy/: test_manifests applies deploy/ without these CRDs


def test_anchor_examples_apply_unchanged_and_run(jobs: Jobs, apply: Any) -> None:
    jobs.start()
    apply(EXAMPLES / "kubedl-tfjob-mnist.yaml", EXAMPLES / "kubeflow-pytorchjob-simple.yaml")
    pods = jobs.wait_running({"mnist-worker-0", "mnist-worker-1", "mnist-worker-2",
                              "pytorch-simple-master-0", "pytorch-simple-worker-0"})
    worker1 = pods["mnist-worker-1"]
    assert worker1["metadata"]["labels"]["replica-type"] == "worker"
    assert worker1["metadata"]["ownerReferences"][0]["kind"] == "TFJob"
    assert worker1["spec"]["restartPolicy"] == "Never"
    assert tf_config(worker1) == {
        "cluster": {"worker": [f"mnist-worker-{i}.{jobs.ns}.svc:2222" for i in range(3)]},
        "task": {"type": "worker", "index": 1}, "environment": "cloud"}
    env = {e["name"]: e["value"] for e in pods["pytorch-simple-worker-0"]["spec"]["containers"][0]["env"]}
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["RANK"], env["WORLD_SIZE"]) == \
        ("pytorch-simple-master-0", "23456", "1", "2")
    want = {"mnist-worker-0", "mnist-worker-1", "mnist-worker-2", "pytorch-simple-master-0", "pytorch-simple-worker-0"}
    services = kubeutil.wait_for(lambda: s if want <= set(s := jobs.services()) else None, WAIT, "Services")
    assert services["mnist-worker-2"]["spec"]["clusterIP"] == "None"
    assert set(services) >= {"mnist-worker-0", "pytorch-simple-master-0", "pytorch-simple-worker-0"}
    jobs.wait_condition("TFJob", "mnist", "Running")
    running = jobs.wait_condition("PyTorchJob", "pytorch-simple", "Running", group=api.KUBEFLOW)
    assert running["reason"] == "PyTorchJobRunning"
    # TF default success policy: worker 0 done -> job done; cleanPodPolicy None keeps the others
    jobs.end_pod("mnist-worker-0", "Succeeded")
    done = jobs.wait_condition("TFJob", "mnist", "Succeeded")
    assert done["reason"] == "JobSucceeded"
    status = jobs.job("TFJob", "mnist")["status"]
    assert status["replicaStatuses"]["Worker"]["succeeded"] == 1 and status["completionTime"]
    assert not jobs.condition("TFJob", "mnist", "Running")
    assert {"mnist-worker-1", "mnist-worker-2"} <= set(jobs.pods())
    jobs.end_pod("pytorch-simple-master-0", "Succeeded", container="pytorch")
    jobs.wait_condition("PyTorchJob", "pytorch-simple", "Succeeded", group=api.KUBEFLOW)


def test_restart_policies(jobs: Jobs) -> None:
    jobs.start()
    run = {"cleanPodPolicy": "All", "backoffLimit": 2}
    for policy in ("ExitCode", "Never", "OnFailure", "Always"):
        jobs.create(tfjob(policy.lower(), run=run, Worker=replica("tensorflow", 2, policy)))
    names = {f"{p}-worker-{i}" for p in ("exitcode", "never", "onfailure", "always") for i in (0, 1)}
    before = jobs.wait_running(names)
    # ExitCode: 137 (SIGKILL) is retryable -> a new pod; exit 1 is not -> Failed
    jobs.end_pod("exitcode-worker-1", "Failed", 137)
    old = before["exitcode-worker-1"]["metadata"]["uid"]
    after = jobs.wait_replaced("exitcode-worker-1", old)
    assert after["exitcode-worker-0"]["metadata"]["uid"] == before["exitcode-worker-0"]["metadata"]["uid"]
    jobs.wait_condition("TFJob", "exitcode", "Running")
    job = jobs.job("TFJob", "exitcode")
    status = job["status"]
    assert status["replicaStatuses"]["Worker"]["restarts"] == 1
    restarting = next(c for c in status["conditions"] if c["type"] == "Restarting")  # True until Running again
    assert (restarting["status"], restarting["reason"]) == ("False", "JobRestarting"), restarting
    assert "recreating exitcode-worker-1" in restarting["message"], restarting
    # KubeDL's fail-over stamp: RFC 3339, written when the replica was recreated (Kubeflow has none)
    stamp = job["metadata"]["annotations"][api.LAST_FAILOVER]
    at = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert stamp.endswith("Z") and abs(time.time() - at.timestamp()) < WAIT, stamp
    assert api.LAST_FAILOVER not in (jobs.job("TFJob", "never")["metadata"].get("annotations") or {})
    jobs.end_pod("exitcode-worker-1", "Failed", 1)
    failed = jobs.wait_condition("TFJob", "exitcode", "Failed")
    assert "exit code 1" in failed["message"]
    # Never: any failure fails the job; cleanPodPolicy All removes every pod and Service
    jobs.end_pod("never-worker-0", "Failed", 137)
    jobs.wait_condition("TFJob", "never", "Failed")
    kubeutil.wait_for(lambda: not jobs.pods("never-") and not jobs.services("never-"), WAIT, "never-* cleaned up")
    # OnFailure / Always: the kubelet restarts containers in place; a pod that failed as a whole
    # (evicted) is recreated; container restarts count against backoffLimit
    for name in ("onfailure", "always"):
        jobs.end_pod(f"{name}-worker-0", "Failed", 0, reason="Evicted")
    again = jobs.wait_replaced("onfailure-worker-0", before["onfailure-worker-0"]["metadata"]["uid"])
    jobs.wait_replaced("always-worker-0", before["always-worker-0"]["metadata"]["uid"])
    assert again["onfailure-worker-0"]["spec"]["restartPolicy"] == "OnFailure"
    assert api.LAST_FAILOVER in jobs.job("TFJob", "onfailure")["metadata"]["annotations"]
    jobs.restart_counts("always-worker-1", "tensorflow", 3)
    over = jobs.wait_condition("TFJob", "always", "Failed")
    assert over["reason"] == "BackoffLimitExceeded", over
    assert not jobs.condition("TFJob", "onfailure", "Failed")


def test_deadline_ttl_suspend_and_gang(jobs: Jobs) -> None:
    jobs.start("--gang-scheduling")
    jobs.create(tfjob("deadline", run={"activeDeadlineSeconds": 2, "cleanPodPolicy": "All"},
                      annotations={api.GANG_ANNOTATION: "false"}, Worker=replica("tensorflow", 1)))
    jobs.create(tfjob("ttl", run={"ttlSecondsAfterFinished": 1}, annotations={api.GANG_ANNOTATION: "false"},
                      Worker=replica("tensorflow", 1)))
    jobs.create(tfjob("held", group=api.KUBEFLOW, run={"suspend": True},
                      annotations={api.GANG_ANNOTATION: "false"}, Worker=replica("tensorflow", 2)))
    jobs.create(tfjob("gang", PS=replica("tensorflow", 1), Worker=replica("tensorflow", 3)))
    failed = jobs.wait_condition("TFJob", "deadline", "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    kubeutil.wait_for(lambda: not jobs.pods("deadline-"), WAIT, "deadline pods deleted")
    jobs.wait_running({"ttl-worker-0"})
    jobs.end_pod("ttl-worker-0", "Succeeded")
    kubeutil.wait_for(lambda: jobs.api.request("GET", api.resource_path(api.KUBEDL, "tfjobs", jobs.ns, "ttl"))[0]
                      == 404, WAIT, "TTL deletes the job")
    suspended = jobs.wait_condition("TFJob", "held", "Suspended", group=api.KUBEFLOW)
    assert suspended["reason"] == "TFJobSuspended" and not jobs.pods("held-")
    jobs.patch_job("TFJob", "held", {"spec": {"runPolicy": {"suspend": False}}}, group=api.KUBEFLOW)
    jobs.wait_running({"held-worker-0", "held-worker-1"})
    assert not jobs.condition("TFJob", "held", "Suspended", group=api.KUBEFLOW)
    # gang: a PodGroup with minMember = all replicas; pods carry its label and schedulerName railnet
    group = kubeutil.wait_for(lambda: jobs.api.request(
        "GET", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{jobs.ns}/podgroups/gang")[1]
        if jobs.api.request("GET", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{jobs.ns}/podgroups/gang")[0]
        == 200 else None, WAIT, "PodGroup gang")
    assert group["spec"]["minMember"] == 4
    pods = kubeutil.wait_for(lambda: p if len(p := jobs.pods("gang-")) == 4 else None, WAIT, "4 gang pods")
    for pod in pods.values():
        assert pod["spec"]["schedulerName"] == "railnet"
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "gang"
        assert not pod["spec"].get("nodeName")  # no railnet scheduler runs here: they wait as a gang
