"""deploy/jobs/rbac.yaml is enough: the controller runs a gang-scheduled host-network job through queue
admission and a fail-over to the end with the ServiceAccount's token (TokenRequest), its Lease in
kube-system, and is refused nothing; and it allows nothing else (SubjectAccessReviews against the real
RBAC authorizer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs import api
from railnet.dev.devcluster import DevCluster
from tests.kube import chart_kube, kubeutil
from tests.kube.test_jobs_support import WAIT, Jobs, job_crds, jobs, replica, tfjob

__all__ = ["job_crds", "jobs"]  # fixtures
SA = "/api/v1/namespaces/kube-system/serviceaccounts/railnet-controller"
USER = "system:serviceaccount:kube-system:railnet-controller"
GROUPS = ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]


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


def allowed(cluster: DevCluster, verb: str, resource: str, group: str = "", namespace: str = "",
            subresource: str = "", name: str = "") -> bool:
    return chart_kube.allowed(cluster, (USER, GROUPS), verb, resource, group, namespace, subresource, name)


def test_controller_may_do_what_it_uses_and_nothing_else(cluster: DevCluster, sa_kubeconfig: Path) -> None:
    def ok(*args: str, **kw: str) -> None:
        assert allowed(cluster, *args, **kw), (args, kw)

    def denied(*args: str, **kw: str) -> None:
        assert not allowed(cluster, *args, **kw), (args, kw)

    for group in (api.KUBEDL, api.KUBEFLOW):
        for verb in ("get", "list", "watch", "patch", "delete"):
            ok(verb, "tfjobs", group=group, namespace="team-a")
        ok("patch", "pytorchjobs", group=group, namespace="team-a", subresource="status")
        for verb in ("create", "update", "deletecollection"):
            denied(verb, "tfjobs", group=group, namespace="team-a")
        denied("update", "tfjobs", group=group, namespace="team-a", subresource="status")
    for verb in ("list", "watch"):  # queue admission reads quotas and priorities, never writes them
        ok(verb, "elasticquotas", group="scheduling.x-k8s.io", namespace="team-a")
        ok(verb, "priorityclasses", group="scheduling.k8s.io")
    for verb in ("create", "update", "patch", "delete"):
        denied(verb, "elasticquotas", group="scheduling.x-k8s.io", namespace="team-a")
        denied(verb, "priorityclasses", group="scheduling.k8s.io")
    denied("update", "elasticquotas", group="scheduling.x-k8s.io", namespace="team-a", subresource="status")
    denied("patch", "podgroups", group="scheduling.x-k8s.io", namespace="team-a")
    denied("get", "secrets", namespace="kube-system")
    denied("list", "configmaps")
    denied("create", "pods", namespace="team-a", subresource="binding")
    denied("create", "pods", namespace="team-a", subresource="eviction")
    denied("patch", "nodes")
    denied("update", "leases", group="coordination.k8s.io", namespace="kube-system", name="railnet-scheduler")


def test_controller_runs_a_job_with_only_its_rbac(jobs: Jobs, sa_kubeconfig: Path, dyn: Any) -> None:
    kubeutil.apply(dyn, kubeutil.load([kubeutil.DEPLOY / "scheduler" / "crds" / "elasticquotas.scheduling.x-k8s.io.yaml"]))
    status, answer = jobs.api.request("POST", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{jobs.ns}/elasticquotas", {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "ElasticQuota", "metadata": {"name": f"q-{jobs.ns}"},
        "spec": {"max": {"cpu": "100"}}})
    assert status == 201, answer
    ctl = jobs.start("--gang-scheduling", "--hostnetwork-port-range=33000-33099", "--admission=quota",
                     kubeconfig=sa_kubeconfig, lease_ns="kube-system")
    jobs.create(tfjob("rb", annotations={api.NETWORK_MODE: "host", api.GANG_ANNOTATION: "true"},
                      run={"ttlSecondsAfterFinished": 0}, Worker=replica("tensorflow", 2)))
    pods = kubeutil.wait_for(lambda: p if len(p := jobs.pods("rb-")) == 2 else None, WAIT, "2 pods")
    assert all(pod["spec"]["schedulerName"] == "railnet" for pod in pods.values())
    kubeutil.wait_for(lambda: len(jobs.services("rb-")) == 2 or None, WAIT, "2 Services")  # each after its pod
    group = f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{jobs.ns}/podgroups/rb"
    assert jobs.api.request("GET", group)[0] == 200
    jobs.wait_condition("TFJob", "rb", "Created")
    job = jobs.job("TFJob", "rb")  # went through the queue: suspended, then admitted
    assert job["metadata"]["annotations"]["railnet.io/admission"] == "Admitted"
    # fail-over (ExitCode, KubeDL's default for workers): the job gets its annotation
    jobs.end_pod("rb-worker-1", "Failed", 137)
    kubeutil.wait_for(lambda: api.LAST_FAILOVER in (jobs.job("TFJob", "rb")["metadata"].get("annotations") or {})
                      or None, WAIT, "the fail-over annotation")
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
