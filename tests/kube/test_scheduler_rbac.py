"""deploy/scheduler/rbac.yaml gives the scheduler what it uses and nothing more (SubjectAccessReviews
against the real RBAC authorizer), and the NodeTopology publisher creates / updates / skips."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from netmanager import topology_publisher
from netmanager.topology.discover import discover
from railnet.dev.devcluster import DevCluster
from railnet.dev.fixtures import build_fixture, nvidia_smi_topo
from tests.kube import chart_kube, kubeutil

SA = "system:serviceaccount:kube-system:railnet-scheduler"
GROUPS = ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]


def allowed(cluster: DevCluster, verb: str, resource: str, group: str = "", namespace: str = "",
            subresource: str = "", name: str = "") -> bool:
    return chart_kube.allowed(cluster, (SA, GROUPS), verb, resource, group, namespace, subresource, name)


@pytest.fixture
def rbac(cluster: DevCluster, dyn: Any) -> Any:
    docs = kubeutil.load([kubeutil.DEPLOY / "scheduler" / "rbac.yaml"])
    kubeutil.apply(dyn, docs)
    yield docs
    api = cluster.api()
    for path in ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/railnet-scheduler",
                 "/apis/rbac.authorization.k8s.io/v1/clusterroles/railnet-scheduler",
                 "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings/railnet-scheduler-lease",
                 "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/roles/railnet-scheduler-lease",
                 "/api/v1/namespaces/kube-system/serviceaccounts/railnet-scheduler"):
        api.request("DELETE", path)


def test_scheduler_may_do_what_it_uses(cluster: DevCluster, rbac: Any) -> None:
    def ok(*args: str, **kw: str) -> None:
        assert allowed(cluster, *args, **kw), (args, kw)

    for verb in ("list", "watch", "get"):
        ok(verb, "nodes")
        ok(verb, "pods")
        ok(verb, "namespaces")
        ok(verb, "nodetopologies", group="railnet.io")
        ok(verb, "podgroups", group="scheduling.x-k8s.io", namespace="team-a")
    ok("create", "pods", subresource="binding", namespace="team-a")
    ok("create", "pods", subresource="eviction", namespace="team-a")
    for verb in ("list", "watch", "get"):
        ok(verb, "elasticquotas", group="scheduling.x-k8s.io", namespace="team-a")
    ok("update", "elasticquotas", group="scheduling.x-k8s.io", namespace="team-a", subresource="status")
    ok("update", "podgroups", group="scheduling.x-k8s.io", namespace="team-a", subresource="status")
    ok("create", "events", namespace="team-a")
    ok("create", "leases", group="coordination.k8s.io", namespace="kube-system")
    ok("update", "leases", group="coordination.k8s.io", namespace="kube-system", name="railnet-scheduler")
    # DRA: read slices and classes; allocate claims (finalizer, then allocation + reservedFor in status)
    for verb in ("list", "watch", "get"):
        ok(verb, "resourceslices", group="resource.k8s.io")
        ok(verb, "deviceclasses", group="resource.k8s.io")
        ok(verb, "resourceclaims", group="resource.k8s.io", namespace="team-a")
    ok("update", "resourceclaims", group="resource.k8s.io", namespace="team-a")
    ok("update", "resourceclaims", group="resource.k8s.io", namespace="team-a", subresource="status")


def test_scheduler_may_not_do_anything_else(cluster: DevCluster, rbac: Any) -> None:
    def denied(*args: str, **kw: str) -> None:
        assert not allowed(cluster, *args, **kw), (args, kw)

    denied("get", "secrets", namespace="kube-system")
    denied("list", "secrets")
    denied("get", "configmaps", namespace="kube-system")
    denied("delete", "nodes")
    denied("patch", "nodes")
    denied("delete", "pods", namespace="team-a")
    denied("patch", "pods", namespace="team-a")
    denied("create", "pods", namespace="team-a")
    denied("update", "leases", group="coordination.k8s.io", namespace="kube-system", name="kube-scheduler")
    denied("create", "nodetopologies", group="railnet.io")
    # quota and gangs: status only, never the objects themselves; evictions only through the Eviction API
    for verb in ("create", "update", "patch", "delete"):
        denied(verb, "elasticquotas", group="scheduling.x-k8s.io", namespace="team-a")
        denied(verb, "podgroups", group="scheduling.x-k8s.io", namespace="team-a")
    denied("patch", "elasticquotas", group="scheduling.x-k8s.io", namespace="team-a", subresource="status")
    denied("update", "pods", namespace="team-a", subresource="status")
    denied("delete", "pods", namespace="team-a", subresource="eviction")
    denied("deletecollection", "pods", namespace="team-a")
    denied("create", "poddisruptionbudgets", group="policy", namespace="team-a")
    denied("delete", "poddisruptionbudgets", group="policy", namespace="team-a")
    # DRA: it allocates claims; it never makes or removes them, nor writes what drivers and admins own
    for verb in ("create", "delete", "patch", "deletecollection"):
        denied(verb, "resourceclaims", group="resource.k8s.io", namespace="team-a")
    denied("patch", "resourceclaims", group="resource.k8s.io", namespace="team-a", subresource="status")
    for verb in ("create", "update", "patch", "delete"):
        denied(verb, "resourceslices", group="resource.k8s.io")
        denied(verb, "deviceclasses", group="resource.k8s.io")
        denied(verb, "resourceclaimtemplates", group="resource.k8s.io", namespace="team-a")
    denied("get", "resourceclaimtemplates", group="resource.k8s.io", namespace="team-a")


def test_topology_publisher_creates_updates_and_skips(api_client: client.ApiClient, railnet_crds: Any,
                                                      cluster: DevCluster) -> None:
    custom = client.CustomObjectsApi(api_client)
    name = "publisher-test-node"
    with tempfile.TemporaryDirectory() as tmp:
        built = build_fixture("pcie-4gpu", Path(tmp) / "sys")
        text = nvidia_smi_topo(built)
        try:
            assert topology_publisher.publish_from_discovery(custom, node_name=name, sysfs_root=str(built.root),
                                                             nvidia_smi_text=text) == "created"
            assert topology_publisher.publish_from_discovery(custom, node_name=name, sysfs_root=str(built.root),
                                                             nvidia_smi_text=text) == "unchanged"
            topo = discover(built.root, nvidia_smi_text=text, node_name=name)
            topo.warnings.append("changed")
            assert topology_publisher.publish(custom, topo) == "updated"
            stored = custom.get_cluster_custom_object("railnet.io", "v1alpha1", "nodetopologies", name)
            assert stored["spec"]["warnings"] == ["changed"] and len(stored["spec"]["gpus"]) == 4
        finally:
            cluster.api().request("DELETE", f"/apis/railnet.io/v1alpha1/nodetopologies/{name}")
