"""Every object the chart renders (and deploy/manifests/railnet.yaml) is accepted by the real API server
(server-side dry run, after its CRDs and namespace are really created); the Deployments roll out on the
dev cluster's nodes with their replicas on different nodes; the controllers' pods pass Pod Security
`restricted`."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes.dynamic import DynamicClient

from railnet.dev import chart, tools
from railnet.dev.devcluster import DevCluster
from tests.kube import kubeutil
from tests.kube.chart_kube import installed, render_into, unique_namespace

EVERYTHING = ("--set", "metrics.dashboard.enabled=true",
              "--set-json", 'pools=[{"name":"rail0","subnet":"172.30.0.0/16","gateway":"172.30.0.1","blockSize":26,'
                            '"ranges":[{"start":"172.30.0.16","end":"172.30.254.254"}],"rail":0,'
                            '"nodeSelector":{"railnet.io/rail0":"true"}}]',
              "--set-json", 'rails=[{"name":"rails","auto":true,"pool":"rail{rail}","mtu":4200},'
                            '{"name":"rail0","rdmaDevice":"mlx5_0","mtu":4200}]')


def contains(big: Any, small: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(big) == len(small) and all(map(contains, big, small))
    return bool(big == small)


def dry_run_all(cluster: DevCluster, dyn: DynamicClient, docs: list[dict[str, Any]]) -> list[str]:
    """CRDs and the Namespace for real, then every other object as a dry run; returns kind/name of each."""
    seen = []
    with installed(cluster, dyn, docs, kinds=()):
        for doc in docs:
            if doc["kind"] in ("CustomResourceDefinition", "Namespace"):
                continue
            (obj,) = kubeutil.apply(dyn, [doc], dry_run=True)
            assert obj.kind == doc["kind"] and obj.metadata.name == doc["metadata"]["name"]
            for field in ("spec", "rules", "data", "roleRef", "subjects"):
                if field in doc:
                    assert contains(obj.to_dict()[field], doc[field]), f"the API server pruned {doc['kind']} {field}"
            seen.append(f"{doc['kind']}/{doc['metadata']['name']}")
    return seen


def test_every_rendered_object_is_accepted(cluster: DevCluster, dyn: DynamicClient) -> None:
    ns = unique_namespace()
    docs = render_into(ns, *EVERYTHING)
    seen = dry_run_all(cluster, dyn, docs)
    for want in ("Deployment/railnet-controller", "Deployment/railnet-scheduler", "Deployment/railnet-ipam",
                 "ClusterRole/railnet-node", "ClusterRole/railnet-node-dra", "ValidatingAdmissionPolicy/railnet-node-own-objects",
                 "IPPool/rail0", "NetworkAttachmentDefinition/rail0", "NetworkAttachmentDefinition/rails", "ConfigMap/railnet-dashboard",
                 "Service/railnet-scheduler-metrics"):
        assert want in seen, want
    assert len(seen) == len(docs) - sum(d["kind"] in ("CustomResourceDefinition", "Namespace") for d in docs)


def test_plain_manifests_are_accepted(cluster: DevCluster, dyn: DynamicClient) -> None:
    docs = [d for d in kubeutil.load([chart.MANIFESTS])]
    assert {d["kind"] for d in docs} >= {"Namespace", "CustomResourceDefinition", "Deployment", "ClusterRole"}
    ns = next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"]
    present = cluster.api().request("GET", f"/api/v1/namespaces/{ns}")[0] == 200
    assert not present, f"namespace {ns} exists already: this test would delete it"
    assert dry_run_all(cluster, dyn, docs)


def test_deployments_roll_out_spread_over_nodes(cluster: DevCluster, dyn: DynamicClient) -> None:
    ns = unique_namespace()
    docs = render_into(ns, "--set", "components.node=false", "--set", "components.dra=false")
    kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "Deployment")
    api = cluster.api()
    with installed(cluster, dyn, docs, kinds):
        def rolled_out() -> list[dict[str, Any]] | None:
            deps = api.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]
            done = [d for d in deps if d["status"].get("readyReplicas", 0) == d["spec"]["replicas"]]
            return deps if len(done) == 3 else None

        kubeutil.wait_for(rolled_out, 90, "the three Deployments ready (kwok nodes)", interval=1)
        pods = api.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        for component in ("controller", "scheduler"):
            mine = [p for p in pods if p["metadata"]["labels"]["app.kubernetes.io/component"] == component]
            assert len(mine) == 2
            assert len({p["spec"]["nodeName"] for p in mine}) == 2, f"{component} replicas share a node"


@pytest.fixture
def restricted_ns(cluster: DevCluster, core: Any) -> Any:
    ns = unique_namespace()
    api = cluster.api()
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}}
    assert api.request("POST", "/api/v1/namespaces", body)[0] == 201
    kubeutil.wait_for(lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(ns).items),
                      30, "default ServiceAccount")
    yield ns
    api.request("DELETE", f"/api/v1/namespaces/{ns}")


def test_controller_pods_pass_pod_security_restricted(cluster: DevCluster, restricted_ns: str) -> None:
    api = cluster.api()
    deployments = [d for d in render_into(restricted_ns) if d["kind"] == "Deployment"]
    assert len(deployments) == 3

    def create_pod(template: dict[str, Any], name: str) -> tuple[int, Any]:
        spec = {**template["spec"], "serviceAccountName": "default", "volumes": [
            v for v in template["spec"]["volumes"] if "configMap" not in v]}
        spec["containers"] = [{**c, "volumeMounts": [m for m in c["volumeMounts"] if m["name"] == "tmp"]}
                              for c in spec["containers"]]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": template["metadata"]["labels"]},
               "spec": spec}
        return api.request("POST", f"/api/v1/namespaces/{restricted_ns}/pods?dryRun=All", pod)

    for dep in deployments:
        status, answer = create_pod(dep["spec"]["template"], dep["metadata"]["name"])
        assert status == 201, (dep["metadata"]["name"], answer)
    # the check can fail: the same pod with a capability added is refused by PodSecurity
    bad = copy.deepcopy(deployments[0]["spec"]["template"])
    bad["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
    status, answer = create_pod(bad, "bad")
    assert status == 403 and "restricted" in answer["message"], answer


def test_service_monitor_is_accepted_by_its_crd(cluster: DevCluster, dyn: DynamicClient) -> None:
    """With metrics.serviceMonitor.enabled: the ServiceMonitor against the Prometheus Operator's own CRD
    (v0.85.0, installed here for the test only: the chart leaves it to the operator)."""
    (crd,) = kubeutil.load([tools.servicemonitor_crd()])
    name = crd["metadata"]["name"]
    had = cluster.api().request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")[0] == 200
    kubeutil.apply(dyn, [crd])
    dyn.resources.invalidate_cache()
    try:
        ns = unique_namespace()
        docs = render_into(ns, "--set", "metrics.serviceMonitor.enabled=true",
                           "--set-json", 'metrics.serviceMonitor.labels={"release":"prom"}')
        (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
        with installed(cluster, dyn, docs, kinds=()):
            (obj,) = kubeutil.apply(dyn, [monitor], dry_run=True)
            assert contains(obj.to_dict()["spec"], monitor["spec"]), "the CRD pruned ServiceMonitor fields"
            assert obj.metadata.labels["release"] == "prom"
    finally:
        if not had:
            cluster.api().request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
