"""kubelet and containerd killed with SIGKILL and restarted (own module: its own cluster, so a node left
tainted by a failure here cannot break the other real-node tests)."""

from __future__ import annotations

import os
import signal

import pytest

from railnet.dev import node
from railnet.dev.devcluster import _alive
from tests.kube.kubeutil import wait_for
from tests.node import helpers as h
from tests.node.conftest import RealNode
from tests.node.test_real_node import _fetch


@pytest.mark.xfail(reason="known failure (issue 13 open): after the restart the node is Ready and the old pod "
                          "survives, but a new pod is scheduled and never started", strict=False)
def test_kubelet_and_containerd_survive_sigkill(real_node: RealNode, ns: str) -> None:
    core, cluster = real_node.core, real_node.cluster
    core.create_namespaced_pod(ns, h.web_pod())
    uid = h.running(core, ns, "web").metadata.uid
    procs = cluster.state()["processes"]
    for name in ("kubelet", "containerd"):
        os.kill(int(procs[name]["pid"]), signal.SIGKILL)
    for name in ("kubelet", "containerd"):
        wait_for(lambda n=name: not _alive(int(procs[n]["pid"]), procs[n].get("start")), 30, f"{name} dead")
    node.restart(cluster, ("containerd", "kubelet"))

    def node_ready() -> bool:
        n = core.read_node(real_node.name)
        return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])

    wait_for(node_ready, 180, "the node Ready again after the restart", interval=1)
    # KCM may have tainted the node while kubelet was away; later pods must schedule again.
    wait_for(lambda: not core.read_node(real_node.name).spec.taints, 180, "the node's taints lifted", interval=1)
    web = h.running(core, ns, "web")
    assert web.metadata.uid == uid
    core.create_namespaced_pod(ns, h.sleeper("client"))
    h.running(core, ns, "client")
    assert _fetch(real_node, ns, "client", f"http://{web.status.pod_ip}:8080/") == "200"
    assert all(cluster.running().values())
