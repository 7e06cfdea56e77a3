"""The chart's RBAC on the real API server: each component's ServiceAccount may do what its code does
(SubjectAccessReviews) and nothing else asked here (Secrets, other components' leases, pods it does not
own, namespaces); and the agent writes only its own node's objects, which RBAC cannot say: the
ValidatingAdmissionPolicy checks the node its token is bound to (real requests with a pod-bound token)."""

from __future__ import annotations

from typing import Any

from kubernetes.dynamic import DynamicClient

from railnet.dev.devcluster import DevCluster
from tests.kube import kubeutil
from tests.kube.chart_kube import TokenApi, allowed, chart_ns, node_bound_token, sa_user

__all__ = ["chart_ns"]  # fixture


def check(cluster: DevCluster, ns: str, component: str, want: bool, cases: list[tuple[Any, ...]]) -> None:
    user = sa_user(ns, component)
    wrong = []
    for case in cases:
        verb, resource, *rest = case
        kw = rest[0] if rest else {}
        if allowed(cluster, user, verb, resource, **kw) != want:
            wrong.append(case)
    assert not wrong, f"railnet-{component} {'may not' if want else 'may'}: {wrong}"


def test_node_agent_may_do_what_it_uses(cluster: DevCluster, chart_ns: str) -> None:
    r, d = "railnet.io", "resource.k8s.io"
    check(cluster, chart_ns, "node", True, [
        ("get", "pods", {"namespace": "team-a"}), ("list", "pods"), ("watch", "pods"),
        ("patch", "pods", {"namespace": "team-a"}),  # network-status
        ("get", "nodes"), ("patch", "nodes", {"name": "gpu-0"}),  # host listeners
        ("get", "network-attachment-definitions", {"group": "k8s.cni.cncf.io", "namespace": "team-a"}),
        ("list", "network-attachment-definitions", {"group": "k8s.cni.cncf.io"}),
        ("watch", "network-attachment-definitions", {"group": "k8s.cni.cncf.io"}),
        ("get", "ippools", {"group": r}), ("watch", "ippools", {"group": r}),
        ("create", "ippoolblocks", {"group": r}), ("list", "ippoolblocks", {"group": r}),
        ("delete", "ippoolblocks", {"group": r}), ("patch", "ippoolblocks", {"group": r, "subresource": "status"}),
        ("create", "ipreservations", {"group": r, "namespace": "team-a"}),
        ("get", "ipreservations", {"group": r, "namespace": "team-a"}),
        ("create", "nodetopologies", {"group": r}), ("update", "nodetopologies", {"group": r}),
        ("create", "resourceslices", {"group": d}), ("update", "resourceslices", {"group": d}),
        ("get", "resourceclaims", {"group": d, "namespace": "team-a"}),
        ("patch", "resourceclaims", {"group": d, "namespace": "team-a", "subresource": "status"}),
        ("associated-node:patch", "resourceclaims", {"group": d, "subresource": "driver", "name": "rdma.railnet.io"}),
    ])


def test_node_agent_may_not_do_anything_else(cluster: DevCluster, chart_ns: str) -> None:
    r, d = "railnet.io", "resource.k8s.io"
    check(cluster, chart_ns, "node", False, [
        ("get", "secrets", {"namespace": chart_ns}), ("list", "secrets"), ("get", "configmaps", {"namespace": "kube-system"}),
        ("create", "pods", {"namespace": "team-a"}), ("delete", "pods", {"namespace": "team-a"}),
        ("update", "pods", {"namespace": "team-a", "subresource": "status"}),
        ("create", "pods", {"namespace": "team-a", "subresource": "binding"}),
        ("delete", "nodes"), ("update", "nodes", {"subresource": "status"}), ("create", "nodes"),
        ("delete", "namespaces"), ("create", "serviceaccounts", {"namespace": chart_ns, "subresource": "token"}),
        ("create", "network-attachment-definitions", {"group": "k8s.cni.cncf.io", "namespace": "team-a"}),
        ("create", "ippools", {"group": r}), ("patch", "ippools", {"group": r, "subresource": "status"}),
        ("update", "ippoolblocks", {"group": r}), ("delete", "nodetopologies", {"group": r}),
        ("delete", "ipreservations", {"group": r, "namespace": "team-a"}),
        ("delete", "resourceslices", {"group": d}), ("update", "resourceclaims", {"group": d, "namespace": "team-a"}),
        ("arbitrary-node:patch", "resourceclaims", {"group": d, "subresource": "driver", "name": "rdma.railnet.io"}),
        ("associated-node:patch", "resourceclaims", {"group": d, "subresource": "driver", "name": "gpu.nvidia.com"}),
        ("update", "leases", {"group": "coordination.k8s.io", "namespace": chart_ns, "name": "railnet-scheduler"}),
    ])


def test_controller_may_do_what_it_uses_and_no_more(cluster: DevCluster, chart_ns: str) -> None:
    j, s = "training.kubedl.io", "scheduling.x-k8s.io"
    check(cluster, chart_ns, "controller", True, [
        ("list", "tfjobs", {"group": j}), ("watch", "pytorchjobs", {"group": "kubeflow.org"}),
        ("patch", "tfjobs", {"group": j, "namespace": "team-a"}), ("delete", "tfjobs", {"group": j, "namespace": "team-a"}),
        ("patch", "pytorchjobs", {"group": "kubeflow.org", "namespace": "team-a", "subresource": "status"}),
        ("create", "pods", {"namespace": "team-a"}), ("delete", "pods", {"namespace": "team-a"}),
        ("create", "services", {"namespace": "team-a"}), ("list", "nodes"),
        ("create", "podgroups", {"group": s, "namespace": "team-a"}), ("list", "elasticquotas", {"group": s}),
        ("list", "priorityclasses", {"group": "scheduling.k8s.io"}), ("create", "events", {"namespace": "team-a"}),
        ("create", "leases", {"group": "coordination.k8s.io", "namespace": chart_ns}),
        ("update", "leases", {"group": "coordination.k8s.io", "namespace": chart_ns, "name": "railnet-controller"}),
    ])
    check(cluster, chart_ns, "controller", False, [
        ("get", "secrets", {"namespace": "team-a"}), ("list", "configmaps"), ("delete", "namespaces"),
        ("update", "tfjobs", {"group": j, "namespace": "team-a"}), ("create", "tfjobs", {"group": j, "namespace": "team-a"}),
        ("create", "pods", {"namespace": "team-a", "subresource": "binding"}), ("patch", "nodes"),
        ("update", "elasticquotas", {"group": s, "namespace": "team-a"}),
        ("update", "leases", {"group": "coordination.k8s.io", "namespace": chart_ns, "name": "railnet-scheduler"}),
        ("create", "leases", {"group": "coordination.k8s.io", "namespace": "kube-system"}),
    ])


def test_scheduler_may_do_what_it_uses_and_no_more(cluster: DevCluster, chart_ns: str) -> None:
    s = "scheduling.x-k8s.io"
    check(cluster, chart_ns, "scheduler", True, [
        ("list", "nodes"), ("watch", "pods"), ("list", "namespaces"), ("list", "nodetopologies", {"group": "railnet.io"}),
        ("create", "pods", {"namespace": "team-a", "subresource": "binding"}),
        ("create", "pods", {"namespace": "team-a", "subresource": "eviction"}),
        ("update", "podgroups", {"group": s, "namespace": "team-a", "subresource": "status"}),
        ("update", "elasticquotas", {"group": s, "namespace": "team-a", "subresource": "status"}),
        ("update", "leases", {"group": "coordination.k8s.io", "namespace": chart_ns, "name": "railnet-scheduler"}),
        ("watch", "resourceslices", {"group": "resource.k8s.io"}), ("list", "deviceclasses", {"group": "resource.k8s.io"}),
        ("update", "resourceclaims", {"group": "resource.k8s.io", "namespace": "team-a", "subresource": "status"}),
    ])
    check(cluster, chart_ns, "scheduler", False, [
        ("create", "resourceclaims", {"group": "resource.k8s.io", "namespace": "team-a"}),
        ("delete", "resourceclaims", {"group": "resource.k8s.io", "namespace": "team-a"}),
        ("update", "resourceslices", {"group": "resource.k8s.io"}),
        ("get", "secrets", {"namespace": "team-a"}), ("delete", "pods", {"namespace": "team-a"}),
        ("patch", "pods", {"namespace": "team-a"}), ("patch", "nodes"), ("delete", "namespaces"),
        ("update", "podgroups", {"group": s, "namespace": "team-a"}),
        ("update", "leases", {"group": "coordination.k8s.io", "namespace": chart_ns, "name": "railnet-controller"}),
    ])


def test_ipam_controller_may_do_what_it_uses_and_no_more(cluster: DevCluster, chart_ns: str) -> None:
    r = "railnet.io"
    check(cluster, chart_ns, "ipam", True, [
        ("list", "nodes"), ("get", "nodes"), ("list", "ippools", {"group": r}), ("list", "ippoolblocks", {"group": r}),
        ("list", "ipreservations", {"group": r}), ("delete", "ippoolblocks", {"group": r}),
        ("patch", "ippools", {"group": r, "subresource": "status"}),
    ])
    check(cluster, chart_ns, "ipam", False, [
        ("get", "secrets", {"namespace": chart_ns}), ("get", "pods", {"namespace": "team-a"}), ("delete", "nodes"),
        ("create", "ippoolblocks", {"group": r}), ("patch", "ippools", {"group": r}), ("delete", "ippools", {"group": r}),
        ("delete", "namespaces"), ("create", "leases", {"group": "coordination.k8s.io", "namespace": chart_ns}),
    ])


# ----------------------------------------------------------------------------------- own node only (VAP)


def test_node_agent_writes_only_its_own_node(cluster: DevCluster, dyn: DynamicClient, chart_ns: str,
                                             railnet_crds: Any) -> None:
    api = cluster.api()
    nodes = sorted(n["metadata"]["name"] for n in api.get("/api/v1/nodes")["items"])
    mine, other = nodes[0], nodes[1]
    agent = TokenApi(cluster, node_bound_token(cluster, chart_ns, mine))
    listeners = {"metadata": {"annotations": {"railnet.io/host-listeners": "22,10250"}}}

    # the policy is enforced once the API server has loaded it: wait for the first refusal
    def refused() -> Any:
        status, answer = agent.merge_patch(f"/api/v1/nodes/{other}", listeners)
        return answer if status == 403 else None

    answer = kubeutil.wait_for(refused, 30, "the policy to refuse a patch of another node")
    assert "railnet-node may only write objects of its own node" in answer["message"], answer
    assert f'belongs to node "{other}"' in answer["message"]

    status, answer = agent.merge_patch(f"/api/v1/nodes/{mine}", listeners)
    assert status == 200, answer
    assert answer["metadata"]["annotations"]["railnet.io/host-listeners"] == "22,10250"
    status, answer = agent.merge_patch(f"/api/v1/nodes/{mine}", {"metadata": {"labels": {"railnet.io/leaf": "x"}}})
    assert status == 403 and "only change the railnet.io/host-listeners annotation" in answer["message"], answer
    status, answer = agent.merge_patch(f"/api/v1/nodes/{mine}", {"spec": {"unschedulable": True}})
    assert status == 403, answer
    status, answer = agent.merge_patch(f"/api/v1/nodes/{mine}", {"metadata": {"annotations": {"other": "x"}}})
    assert status == 403, answer

    topo = "/apis/railnet.io/v1alpha1/nodetopologies"
    for node, want in ((other, 403), (mine, 201)):
        body = {"apiVersion": "railnet.io/v1alpha1", "kind": "NodeTopology", "metadata": {"name": node},
                "spec": {"nodeName": node, "sockets": 1, "numaToSocket": {"0": 0}, "gpus": [], "nics": [], "gpuGpu": [],
                         "gpuNic": []}}
        status, answer = agent.request("POST", topo, body)
        assert status == want, (node, answer.get("message"))
    api.request("DELETE", f"{topo}/{mine}")

    # pods: network-status only on pods of its node
    for node in (mine, other):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"work-{node}", "namespace": chart_ns},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "railnet.local/none"}]}}
        assert api.request("POST", f"/api/v1/namespaces/{chart_ns}/pods", pod)[0] == 201
    status_ann = {"metadata": {"annotations": {"k8s.v1.cni.cncf.io/network-status": "[]"}}}
    assert agent.merge_patch(f"/api/v1/namespaces/{chart_ns}/pods/work-{mine}", status_ann)[0] == 200
    status, answer = agent.merge_patch(f"/api/v1/namespaces/{chart_ns}/pods/work-{other}", status_ann)
    assert status == 403 and f'belongs to node "{other}"' in answer["message"], answer

    # IPPoolBlocks: claim, publish status of and release only its node's blocks; fixed-IP claims (no node)
    blocks = "/apis/railnet.io/v1alpha1/ippoolblocks"

    def block(name: str, node: str, reservation: str = "") -> dict[str, Any]:
        spec = {"pool": "chart-vap", "cidr": f"10.252.{len(name)}.{sum(map(ord, name)) % 250}/32", "node": node}
        if reservation:
            spec["reservation"] = reservation
        return {"apiVersion": "railnet.io/v1alpha1", "kind": "IPPoolBlock",
                "metadata": {"name": f"chart-vap-{name}", "labels": {"railnet.io/pool": "chart-vap"}}, "spec": spec}

    try:
        status, answer = agent.request("POST", blocks, block("theirs", other))
        assert status == 403 and f'belongs to node "{other}"' in answer["message"], answer
        for body in (block("mine", mine), block("fixed", "", reservation=f"{chart_ns}/job-worker-0")):
            status, answer = agent.request("POST", blocks, body)
            assert status == 201, answer
        assert api.request("POST", blocks, block("theirs", other))[0] == 201  # made by the admin
        status, answer = agent.merge_patch(f"{blocks}/chart-vap-theirs/status", {"status": {"allocated": 1}})
        assert status == 403, answer
        assert agent.merge_patch(f"{blocks}/chart-vap-mine/status", {"status": {"allocated": 1}})[0] == 200
        status, answer = agent.request("DELETE", f"{blocks}/chart-vap-theirs")
        assert status == 403 and f'belongs to node "{other}"' in answer["message"], answer
        for name in ("mine", "fixed"):
            assert agent.request("DELETE", f"{blocks}/chart-vap-{name}")[0] == 200, name
    finally:
        for name in ("mine", "fixed", "theirs"):
            api.request("DELETE", f"{blocks}/chart-vap-{name}")

    # a token of the same ServiceAccount bound to no pod (so to no node) may write nothing
    status, plain = api.request("POST", f"/api/v1/namespaces/{chart_ns}/serviceaccounts/railnet-node/token",
                                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    assert status == 201, plain
    unbound = TokenApi(cluster, plain["status"]["token"])
    status, answer = unbound.merge_patch(f"/api/v1/nodes/{mine}", listeners)
    assert status == 403 and "bound to no node" in answer["message"], answer
    # reading stays allowed (RBAC), so the agent can still start and report what is wrong
    assert unbound.request("GET", f"/api/v1/nodes/{mine}")[0] == 200


def test_policy_leaves_other_users_alone(cluster: DevCluster, core: Any, chart_ns: str) -> None:
    """Only railnet-node is matched: the admin (like the kubelet or a controller) changes any node's labels."""
    node = sorted(n["metadata"]["name"] for n in cluster.api().get("/api/v1/nodes")["items"])[1]
    core.patch_node(node, {"metadata": {"labels": {"railnet.io/chart-test": "1"}}})
    try:
        assert core.read_node(node).metadata.labels["railnet.io/chart-test"] == "1"
    finally:
        core.patch_node(node, {"metadata": {"labels": {"railnet.io/chart-test": None}}})
