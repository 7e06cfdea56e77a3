"""kubelet and containerd killed with SIGKILL and restarted (own module: its own cluster, so a node left
tainted by a failure here cannot break the other real-node tests)."""

from __future__ import annotations

import datetime
import os
import signal

from kubernetes import client

from railnet.dev import node
from railnet.dev.devcluster import _alive
from tests.kube.kubeutil import wait_for
from tests.node import helpers as h
from tests.node.conftest import RealNode
from tests.node.test_real_node import _fetch


def test_kubelet_and_containerd_survive_sigkill(real_node: RealNode, ns: str) -> None:
    core, cluster = real_node.core, real_node.cluster
    core.create_namespaced_pod(ns, h.web_pod())
    uid = h.running(core, ns, "web").metadata.uid
    procs = cluster.state()["processes"]
    for name in ("kubelet", "containerd"):
        os.kill(int(procs[name]["pid"]), signal.SIGKILL)
    for name in ("kubelet", "containerd"):
        wait_for(lambda n=name: not _alive(int(procs[n]["pid"]), procs[n].get("start")), 30, f"{name} dead")
    restarted = datetime.datetime.now(datetime.UTC)
    node.restart(cluster, ("containerd", "kubelet"))
    leases = client.CoordinationV1Api(real_node.api_client)

    def heartbeat_after_restart() -> bool:
        # Ready alone proves nothing: the node stays Ready for the grace period after its kubelet died.
        renewed = leases.read_namespaced_lease(real_node.name, "kube-node-lease").spec.renew_time
        ready = any(c.type == "Ready" and c.status == "True"
                    for c in core.read_node(real_node.name).status.conditions or [])
        return ready and renewed is not None and renewed > restarted

    wait_for(heartbeat_after_restart, 180, "the node Ready, its lease renewed by the new kubelet", interval=1)
    # KCM may have tainted the node while kubelet was away; later pods must schedule again.
    wait_for(lambda: not core.read_node(real_node.name).spec.taints, 180, "the node's taints lifted", interval=1)
    web = h.running(core, ns, "web")
    assert web.metadata.uid == uid
    core.create_namespaced_pod(ns, h.sleeper("client"))
    h.running(core, ns, "client")
    assert _fetch(real_node, ns, "client", f"http://{web.status.pod_ip}:8080/") == "200"
    assert all(cluster.running().values()), cluster.running()
