"""deploy/jobs/rbac.yaml is enough: the controller runs a gang-scheduled host-network job to the end
with the ServiceAccount's token (TokenRequest), its Lease in kube-system, and is refused nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs import api
from railnet.dev.devcluster import DevCluster
from tests.kube import kubeutil
from tests.kube.test_jobs_support import WAIT, Jobs, job_crds, jobs, replica, tfjob

__all__ = ["job_crds", "jobs"]  # fixtures
SA = "/api/v1/namespaces/kube-system/serviceaccounts/railnet-controller"


@pytest.fixture
def sa_kubeconfig(cluster: DevCluster, dyn: Any, tmp_path: Path) -> Iterator[Path]:
    docs = kubeutil.load([kubeutil.DEPLOY / "jobs" / "rbac.yaml"])
    kubeutil.apply(dyn, docs)
    a = cluster.api()
    status, answer = a.request("POST", f"{SA}/token", {"apiVersion": "authentication.k8s.io/v1",
                                                        "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    assert status == 201, answer
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": answer["status"]["token"]}
    path = tmp_path / "sa.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    yield path
    for doc in reversed(docs):
        ns = doc["metadata"].get("namespace")
        plural = doc["kind"].lower() + "s"
        base = f"/apis/{doc['apiVersion']}" if "/" in doc["apiVersion"] else "/api/v1"
        a.request("DELETE", f"{base}{f'/namespaces/{ns}' if ns else ''}/{plural}/{doc['metadata']['name']}")
    a.request("DELETE", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/railnet-controller")


def test_controller_runs_a_job_with_only_its_rbac(jobs: Jobs, sa_kubeconfig: Path) -> None:
    ctl = jobs.start("--gang-scheduling", "--hostnetwork-port-range=33000-33099", kubeconfig=sa_kubeconfig,
                     lease_ns="kube-system")
    jobs.create(tfjob("rb", annotations={api.NETWORK_MODE: "host", api.GANG_ANNOTATION: "true"},
                      run={"ttlSecondsAfterFinished": 0}, Worker=replica("tensorflow", 2)))
    pods = kubeutil.wait_for(lambda: p if len(p := jobs.pods("rb-")) == 2 else None, WAIT, "2 pods")
    assert all(pod["spec"]["schedulerName"] == "railnet" for pod in pods.values())
    kubeutil.wait_for(lambda: len(jobs.services("rb-")) == 2 or None, WAIT, "2 Services")  # each after its pod
    group = f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{jobs.ns}/podgroups/rb"
    assert jobs.api.request("GET", group)[0] == 200
    jobs.wait_condition("TFJob", "rb", "Created")
    # nobody binds gang pods here: end worker 0 as if it ran; TTL 0 then deletes the job
    jobs.end_pod("rb-worker-0", "Succeeded")
    path = api.resource_path(api.KUBEDL, "tfjobs", jobs.ns, "rb")
    kubeutil.wait_for(lambda: jobs.api.request("GET", path)[0] == 404, WAIT, "job deleted after TTL")
    assert jobs.api.request("GET", group)[0] == 404
    events = jobs.api.get(f"/api/v1/namespaces/{jobs.ns}/events")["items"]
    assert any(e["reason"] == "SuccessfulCreatePod" for e in events)
    assert jobs.metric(ctl, "railnet_jobs_leader") == 1
    # The controller watches every namespace: other tests' jobs in namespaces being deleted get 403
    # NamespaceTerminating, which says nothing about its RBAC. Judge the lines about this test's jobs.
    text = "\n".join(line for line in jobs.log_text(ctl).splitlines() if jobs.ns in line)
    assert "HTTP 403" not in text and "forbidden" not in text.lower(), text[-2000:]
    assert "event not recorded" not in text and "reconcile failed" not in text, text[-2000:]
