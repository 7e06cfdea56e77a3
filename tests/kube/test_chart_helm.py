"""`helm install`, `helm upgrade` and `helm uninstall` of the chart against the dev cluster's API server,
with the pinned helm: everything comes up on the kwok nodes (the DaemonSet too: kwok plays its pods),
an upgrade changes what it should, uninstall leaves nothing of ours behind; bad values fail the install
with what to fix and create nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from railnet.dev import chart
from railnet.dev.devcluster import DevCluster
from tests.kube import kubeutil
from tests.kube.chart_kube import unique_namespace
from tests.unit.chart_support import helm_path

CLUSTER_SCOPED = ("/apis/rbac.authorization.k8s.io/v1/clusterroles/railnet-node",
                  "/apis/rbac.authorization.k8s.io/v1/clusterroles/railnet-node-dra",
                  "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/railnet-controller",
                  "/apis/rbac.authorization.k8s.io/v1/clusterroles/railnet-scheduler",
                  "/apis/rbac.authorization.k8s.io/v1/clusterroles/railnet-ipam",
                  "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/railnet-node-own-objects",
                  "/apis/railnet.io/v1alpha1/ippools/chart-helm-pool")
POOL = ('pools=[{"name":"chart-helm-pool","subnet":"10.251.0.0/16","blockSize":24,'
        '"ranges":[{"start":"10.251.0.10","end":"10.251.255.250"}]}]')


def helm(cluster: DevCluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_path(), "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def exists(cluster: DevCluster, path: str) -> bool:
    return cluster.api().request("GET", path)[0] == 200


def test_install_upgrade_uninstall(cluster: DevCluster, railnet_crds: Any, tmp_path: Path) -> None:
    ns = unique_namespace()
    release = f"rn-{ns[-6:]}"
    base = ("--namespace", "default", "--set", f"namespace.name={ns}", "--set", "cni.primaryConflist=10-calico.conflist",
            "--set-json", POOL)
    api = cluster.api()
    try:
        proc = helm(cluster, "install", release, str(chart.CHART), *base, "--wait", "--timeout", "180s")
        assert proc.returncode == 0, proc.stderr
        assert f"is installed in namespace {ns}" in proc.stdout and "rollout status daemonset/railnet-node" in proc.stdout
        status = json.loads(helm(cluster, "status", release, "-n", "default", "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"
        for path in CLUSTER_SCOPED:
            assert exists(cluster, path), path
        deps = {d["metadata"]["name"]: d for d in api.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]}
        assert {n: d["status"].get("readyReplicas") for n, d in deps.items()} == {
            "railnet-controller": 2, "railnet-scheduler": 2, "railnet-ipam": 1}
        ds = api.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/railnet-node")
        nodes = len(api.get("/api/v1/nodes")["items"])
        assert ds["status"]["desiredNumberScheduled"] == nodes and ds["status"].get("numberReady") == nodes, ds["status"]
        labels = api.get(f"/api/v1/namespaces/{ns}")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "privileged"

        proc = helm(cluster, "upgrade", release, str(chart.CHART), *base, "--set", "controller.replicas=1",
                    "--set", "components.ipam=false", "--wait", "--timeout", "180s")
        assert proc.returncode == 0, proc.stderr
        kubeutil.wait_for(lambda: api.get(f"/apis/apps/v1/namespaces/{ns}/deployments/railnet-controller")["spec"]
                          ["replicas"] == 1 or None, 30, "controller scaled to 1")
        assert not exists(cluster, f"/apis/apps/v1/namespaces/{ns}/deployments/railnet-ipam")
        assert not exists(cluster, "/apis/rbac.authorization.k8s.io/v1/clusterroles/railnet-ipam")

        proc = helm(cluster, "uninstall", release, "-n", "default", "--wait", "--timeout", "180s")
        assert proc.returncode == 0, proc.stderr
        left = [p for p in CLUSTER_SCOPED if exists(cluster, p)]
        assert not left, f"uninstall left {left}"
        gone = api.request("GET", f"/api/v1/namespaces/{ns}")
        assert gone[0] == 404 or gone[1]["status"]["phase"] == "Terminating", gone
    finally:
        helm(cluster, "uninstall", release, "-n", "default")


def test_bad_values_fail_the_install_and_create_nothing(cluster: DevCluster, railnet_crds: Any) -> None:
    ns = unique_namespace()
    bad_pool = 'pools=[{"name":"chart-helm-pool","subnet":"10.251.0.0/16","ranges":[{"start":"10.251.0.1","end":"10.252.0.1"}]}]'
    for args, message in (
        ((), "cni.primaryConflist is empty"),
        (("--set", "cni.primaryConflist=10-calico.conflist", "--set-json", bad_pool),
         "pools[0] (chart-helm-pool): ranges[0] end: 10.252.0.1 is not inside subnet 10.251.0.0/16"),
        (("--set", "cni.primaryConflist=10-calico.conflist", "--set", "components.sriov=true"),
         "components.sriov: unknown component"),
    ):
        proc = helm(cluster, "install", "rn-bad", str(chart.CHART), "--namespace", "default",
                    "--set", f"namespace.name={ns}", *args)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert helm(cluster, "status", "rn-bad", "-n", "default").returncode != 0  # no release recorded
        assert not exists(cluster, f"/api/v1/namespaces/{ns}")
        left = [p for p in CLUSTER_SCOPED if exists(cluster, p)]
        assert not left, f"a failed install created {left}"
