"""The `railnet` meta plugin end to end: pods and NetworkAttachmentDefinitions in the real API
server, the shim -> agent path, the reference `ptp` plugin as the primary network (the Calico
stand-in), two macvlan rails on veth "NICs", real network namespaces; everything removed after."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cni.spec import errors
from railnet.dev.devcluster import DevCluster
from railnet.dev.lab import REFERENCE_CNI_DIR, AgentProcess, Lab, PluginCall, ip, links_in, run_plugin

NAD_API = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("rnm") as lab:
        yield lab


class Node:
    """One agent with cluster access, its shim, the node's CNI conf dir holding the primary network."""

    def __init__(self, lab: Lab, kubeconfig: Path) -> None:
        self.lab = lab
        self.nics = [lab.nic("r0"), lab.nic("r1")]
        self.conf_dir = lab.tmp / "net.d"
        self.conf_dir.mkdir()
        (self.conf_dir / "10-pods.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "pods", "plugins": [
                {"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.62.0.0/24"}]],
                                         "dataDir": str(lab.tmp / "host-local")}}]}))
        self.agent = AgentProcess(lab.tmp / "agent")
        self.agent.args = ["--kubeconfig", str(kubeconfig), "--node-name", f"{lab.prefix}-node"]
        lab.agents.append(self.agent)
        self.agent.start()
        self.bin_dir = lab.install_shim()

    def conf(self, **extra: Any) -> dict[str, Any]:
        return {"cniVersion": "1.1.0", "name": "railnet", "type": "railnet", "clusterNetwork": "pods",
                "confDir": str(self.conf_dir), **extra}

    def call(self, command: str, pod: client.V1Pod, netns: str, conf: dict[str, Any] | None = None) -> PluginCall:
        meta = pod.metadata  # CNI_ARGS as containerd passes them
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={meta.namespace};K8S_POD_NAME={meta.name};K8S_POD_UID={meta.uid}"
        return run_plugin(self.bin_dir / "railnet", command, conf or self.conf(), container_id=f"c-{meta.name}",
                          ifname="eth0", netns=netns, cni_path=[self.bin_dir, REFERENCE_CNI_DIR],
                          env=self.agent.env(), args=args)

    def allocations(self) -> int:
        import sqlite3

        with sqlite3.connect(self.agent.db_path) as db:
            return int(db.execute("SELECT COUNT(*) FROM ipam_allocation").fetchone()[0])


@pytest.fixture
def node(lab: Lab, cluster: DevCluster, railnet_crds: list[dict[str, Any]]) -> Node:
    return Node(lab, cluster.kubeconfig)


def make_nad(custom: client.CustomObjectsApi, namespace: str, name: str, config: dict[str, Any]) -> None:
    body = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name}, "spec": {"config": json.dumps(config)}}
    custom.create_namespaced_custom_object(NAD_API[0], NAD_API[1], namespace, NAD_API[2], body)


def rail(nic: str, subnet: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "type": "railnet-macvlan", "master": nic,
            "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": subnet}]]}}


def make_pod(core: client.CoreV1Api, namespace: str, name: str, networks: str) -> client.V1Pod:
    """A pod object nobody schedules (its sandbox is the test's netns): only its annotations matter."""
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name=name, annotations={"k8s.v1.cni.cncf.io/networks": networks}),
                       spec=client.V1PodSpec(scheduler_name="nobody", containers=[
                           client.V1Container(name="c", image="none")]))
    return core.create_namespaced_pod(namespace, pod)


def test_primary_and_two_rails_from_the_annotation(node: Node, core: client.CoreV1Api,
                                                  custom: client.CustomObjectsApi, namespace: str) -> None:
    make_nad(custom, namespace, "rail0", rail(node.nics[0], "10.63.0.0/24"))
    make_nad(custom, namespace, "rail1", rail(node.nics[1], "10.64.0.0/24"))
    pod = make_pod(core, namespace, "trainer-0", "rail0, rail1@rdma1")
    netns = node.lab.netns("pod")
    add = node.call("ADD", pod, netns)
    assert add.ok, add.output
    assert sorted(links_in(netns)) == ["eth0", "lo", "net1", "rdma1"]
    assert add.output is not None and [i["name"] for i in add.output["interfaces"] if i.get("sandbox")] == ["eth0"]
    shown = ip("-n", Path(netns).name, "-4", "-o", "addr")
    status = json.loads(core.read_namespaced_pod("trainer-0", namespace).metadata.annotations[
        "k8s.v1.cni.cncf.io/network-status"])
    assert [(s["name"], s["interface"], s["default"]) for s in status] == [
        ("pods", "eth0", True), (f"{namespace}/rail0", "net1", False), (f"{namespace}/rail1", "rdma1", False)]
    for entry in status:  # what the annotation says is what the pod has
        assert all(f"inet {addr}/" in shown for addr in entry["ips"]), (entry, shown)
        assert entry["interface"] in shown
    assert node.call("CHECK", pod, netns, {**node.conf(), "prevResult": add.output}).ok
    assert node.call("DEL", pod, netns).ok
    assert links_in(netns) == ["lo"] and node.allocations() == 0
    assert node.call("DEL", pod, netns).ok  # a second DEL is fine


def test_failing_delegate_and_bad_input_leave_nothing(node: Node, core: client.CoreV1Api,
                                                      custom: client.CustomObjectsApi, namespace: str) -> None:
    make_nad(custom, namespace, "rail0", rail(node.nics[0], "10.65.0.0/24"))
    make_nad(custom, namespace, "broken", rail("rnm-no-such-nic", "10.66.0.0/24"))
    cases = [
        ("rail0, rail0@net2, broken", errors.MASTER_NOT_FOUND, f"{namespace}/broken"),  # the third one fails
        ("missing", errors.INVALID_CONFIG, "not found"),
        ("rail0@eth0", errors.INVALID_CONFIG, "used twice"),
        ("[{\"name\": \"rail0\"", errors.INVALID_CONFIG, "not valid JSON"),
    ]
    for i, (networks, code, words) in enumerate(cases):
        pod = make_pod(core, namespace, f"p{i}", networks)
        netns = node.lab.netns(f"p{i}")
        call = node.call("ADD", pod, netns)
        assert call.output is not None and call.output["code"] == code, (networks, call.output)
        assert words in call.output["msg"] + call.output.get("details", ""), call.output
        assert links_in(netns) == ["lo"], (networks, links_in(netns))
        assert node.allocations() == 0
        annotations = core.read_namespaced_pod(f"p{i}", namespace).metadata.annotations
        assert "k8s.v1.cni.cncf.io/network-status" not in annotations


def test_del_works_when_pod_and_nads_are_gone(node: Node, core: client.CoreV1Api,
                                              custom: client.CustomObjectsApi, namespace: str) -> None:
    make_nad(custom, namespace, "rail0", rail(node.nics[0], "10.67.0.0/24"))
    pod = make_pod(core, namespace, "gone", "rail0")
    netns = node.lab.netns("gone")
    assert node.call("ADD", pod, netns).ok
    core.delete_namespaced_pod("gone", namespace, grace_period_seconds=0)
    custom.delete_namespaced_custom_object(NAD_API[0], NAD_API[1], namespace, NAD_API[2], "rail0")
    assert node.call("DEL", pod, netns).ok
    assert links_in(netns) == ["lo"] and node.allocations() == 0
