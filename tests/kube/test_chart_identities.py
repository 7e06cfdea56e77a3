"""The chart's identities are enough for the real code, not only for SubjectAccessReviews: the IPAM
controller's pass and the agent's NodeTopology and host-listener publishers run with the tokens of their
own ServiceAccounts (the agent's bound to a pod on one node) and are refused nothing they need."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ipam.controller import reconcile_once
from ipam.crd import BLOCK_KIND, GROUP, NODE_LABEL, POOL_LABEL, VERSION, block_name
from ipam.kubeapi import KubeApi
from netmanager import topology_publisher
from netmanager.host_listeners import ListenerPublisher
from railnet.dev.devcluster import DevCluster
from railnet.dev.fixtures import build_fixture, nvidia_smi_topo
from tests.kube import kubeutil
from tests.kube.chart_kube import chart_ns, node_bound_token, sa_token, token_kubeconfig

__all__ = ["chart_ns"]  # fixture
RAILNET = f"/apis/{GROUP}/{VERSION}"


def nodes(cluster: DevCluster) -> list[str]:
    return sorted(n["metadata"]["name"] for n in cluster.api().get("/api/v1/nodes")["items"])


def test_ipam_controller_runs_as_railnet_ipam(cluster: DevCluster, chart_ns: str, railnet_crds: Any,
                                              tmp_path: Path) -> None:
    api = cluster.api()
    pool = f"chart-{uuid.uuid4().hex[:6]}"
    live = nodes(cluster)[0]
    blocks = {"10.250.0.0/26": f"gone-{pool}", "10.250.0.64/26": live}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "IPPool", "metadata": {"name": pool},
            "spec": {"subnet": "10.250.0.0/24", "blockSize": 26}}
    assert api.request("POST", f"{RAILNET}/ippools", body)[0] == 201
    try:
        for cidr, node in blocks.items():
            block = {"apiVersion": f"{GROUP}/{VERSION}", "kind": BLOCK_KIND,
                     "metadata": {"name": block_name(pool, cidr), "labels": {POOL_LABEL: pool, NODE_LABEL: node}},
                     "spec": {"pool": pool, "cidr": cidr, "node": node}}
            status, answer = api.request("POST", f"{RAILNET}/ippoolblocks", block)
            assert status == 201, answer
        ipam = KubeApi(token_kubeconfig(cluster, sa_token(cluster, chart_ns, "railnet-ipam"), tmp_path / "kc"))
        try:
            released = reconcile_once(ipam)  # any 403 raises ApiError
        finally:
            ipam.close()
        assert block_name(pool, "10.250.0.0/26") in released
        assert block_name(pool, "10.250.0.64/26") not in released
        assert api.request("GET", f"{RAILNET}/ippoolblocks/{block_name(pool, '10.250.0.64/26')}")[0] == 200
        status = api.get(f"{RAILNET}/ippools/{pool}").get("status", {})
        assert status.get("blocks") == 1 and status.get("capacity", 0) > 0, status  # written by railnet-ipam
    finally:
        for cidr in blocks:
            api.request("DELETE", f"{RAILNET}/ippoolblocks/{block_name(pool, cidr)}")
        api.request("DELETE", f"{RAILNET}/ippools/{pool}")


def test_agent_publishes_its_node_as_railnet_node(cluster: DevCluster, chart_ns: str, railnet_crds: Any,
                                                  tmp_path: Path) -> None:
    mine, other = nodes(cluster)[:2]
    kubeconfig = token_kubeconfig(cluster, node_bound_token(cluster, chart_ns, mine), tmp_path / "kc")
    agent = config.new_client_from_config(config_file=str(kubeconfig))
    custom, core = client.CustomObjectsApi(agent), client.CoreV1Api(agent)
    api = cluster.api()
    publisher = ListenerPublisher(kubeconfig, mine, interval=0.5)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            built = build_fixture("pcie-4gpu", Path(tmp) / "sys")
            text = nvidia_smi_topo(built)
            # the policy may take a moment to load: until then another node's write could pass; wait for it
            def refused() -> bool:
                try:
                    topology_publisher.publish_from_discovery(custom, core, node_name=other,
                                                              sysfs_root=str(built.root), nvidia_smi_text=text)
                except ApiException as exc:
                    return exc.status == 403
                api.request("DELETE", f"{RAILNET}/nodetopologies/{other}")
                return False

            kubeutil.wait_for(refused, 30, "another node's NodeTopology refused", interval=0.5)
            assert topology_publisher.publish_from_discovery(custom, core, node_name=mine, sysfs_root=str(built.root),
                                                             nvidia_smi_text=text) == "created"
        stored = api.get(f"{RAILNET}/nodetopologies/{mine}")
        assert stored["metadata"]["ownerReferences"][0]["name"] == mine  # owned by its Node (read as itself)
        publisher.start()

        def listeners() -> str | None:
            return (api.get(f"/api/v1/nodes/{mine}")["metadata"].get("annotations") or {}).get(
                "railnet.io/host-listeners")

        assert kubeutil.wait_for(listeners, 30, "railnet.io/host-listeners on the agent's node")
    finally:
        publisher.stop()
        agent.close()
        api.request("DELETE", f"{RAILNET}/nodetopologies/{mine}")
        client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig))).patch_node(
            mine, {"metadata": {"annotations": {"railnet.io/host-listeners": None}}})


@pytest.mark.parametrize("component", ["controller", "scheduler"])
def test_leader_election_as_its_own_identity(cluster: DevCluster, chart_ns: str, component: str,
                                             tmp_path: Path) -> None:
    """Each leader-elected component takes over its Lease in the chart's namespace (what the Deployment's
    --lease-namespace names) with its own token, and cannot take over the other's. Both leases exist,
    held by a holder that stopped renewing, so only RBAC decides."""
    from scheduler.live.kubeapi import KubeApi as LiveApi
    from scheduler.live.kubeapi import endpoint_from_config
    from scheduler.live.leader import LeaderElector

    api = cluster.api()
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{chart_ns}/leases"
    other = "scheduler" if component == "controller" else "controller"
    for name in (component, other):
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": f"railnet-{name}"},
                "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 1}}
        assert api.request("POST", leases, body)[0] == 201
    kc = token_kubeconfig(cluster, sa_token(cluster, chart_ns, f"railnet-{component}"), tmp_path / "kc")
    live = LiveApi(endpoint_from_config(str(kc)))
    try:
        mine = LeaderElector(live, chart_ns, f"railnet-{component}", "test-identity", 15.0, 10.0, 2.0)
        theirs = LeaderElector(live, chart_ns, f"railnet-{other}", "test-identity", 15.0, 10.0, 2.0)
        assert not mine.try_acquire_or_renew() and not theirs.try_acquire_or_renew()  # observed "gone"
        time.sleep(1.2)  # "gone" did not renew within its duration
        assert mine.try_acquire_or_renew(), f"railnet-{component} could not take over its own Lease"
        assert api.get(f"{leases}/railnet-{component}")["spec"]["holderIdentity"] == "test-identity"
        assert not theirs.try_acquire_or_renew(), f"railnet-{component} took over railnet-{other}'s Lease"
        assert api.get(f"{leases}/railnet-{other}")["spec"]["holderIdentity"] == "gone"
    finally:
        for name in (component, other):
            api.request("DELETE", f"{leases}/railnet-{name}")
