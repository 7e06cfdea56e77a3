"""The `railnet` meta plugin on the real node: containerd execs railnet's shim for every pod sandbox.

`railnet install-cni` puts the shim into the node's (private) CNI bin dir and writes
`00-railnet.conflist` wrapping the node's primary (bridge + host-local, the Calico stand-in), exactly
as on a production node; the agent runs on the host with the cluster's kubeconfig. Two veth "NICs"
stand in for two RoCE rails; each is a NAD (railnet-macvlan + railnet-ipam). Two pods ask for both
rails by annotation. Own module: its own cluster, so the other real-node tests see a plain node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, dynamic

from cni.meta import netconf
from railnet.dev import node
from railnet.dev.deviceplugin import DevicePlugin
from railnet.dev.lab import AgentProcess, Lab
from tests.kube import kubeutil
from tests.node import helpers as h
from tests.node.conftest import RealNode
from tests.node.test_real_node import _exec, _fetch

NAD_API = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")
RAILS = {"rail0": "10.71.0.0/24", "rail1": "10.72.0.0/24"}
ROCE_PORT = 4791


class RailnetOnNode:
    """railnet installed on the real node: shim + conflist in its CNI dirs, an agent on the host."""

    def __init__(self, rn: RealNode, lab: Lab) -> None:
        self.rn, self.lab = rn, lab
        self.nics = {rail: lab.nic(rail[-1]) for rail in RAILS}
        # The shim only follows an agentSocket below /run/railnet/: the agent's whole root lives there.
        self.root = Path("/run/railnet") / f"node-test-{uuid.uuid4().hex[:8]}"
        self.agent = AgentProcess(self.root)
        self.agent.args = ["--kubeconfig", str(rn.cluster.kubeconfig), "--node-name", rn.name,
                           "--pod-resources-socket", str(rn.layout.kubelet_root / "pod-resources" / "kubelet.sock")]
        lab.agents.append(self.agent)
        self.agent.start()
        self.install("--agent-socket", str(self.agent.socket))

    def install(self, *extra: str) -> None:
        lay = self.rn.layout
        proc = subprocess.run([sys.executable, "-m", "railnet.cli", "install-cni", "--dest", str(lay.cni_bin),
                               "--conf-dir", str(lay.cni_conf), *extra], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr + proc.stdout

    def uninstall(self) -> None:
        self.install("--uninstall")
        shutil.rmtree(self.root, ignore_errors=True)

    def allocations(self) -> int:
        import sqlite3

        with sqlite3.connect(self.agent.db_path) as db:
            return int(db.execute("SELECT COUNT(*) FROM ipam_allocation").fetchone()[0])


@pytest.fixture(scope="module")
def railnet_node(real_node: RealNode) -> Iterator[RailnetOnNode]:
    dyn = dynamic.DynamicClient(real_node.api_client)
    kubeutil.apply(dyn, kubeutil.load(sorted((kubeutil.DEPLOY / "crds").glob("*.yaml"))))
    with Lab("rnn") as lab:
        installed = RailnetOnNode(real_node, lab)
        try:
            yield installed
        finally:
            installed.uninstall()
            assert not (real_node.layout.cni_conf / netconf.META_FILE).exists()


def make_nads(rn: RealNode, ns: str, nics: dict[str, str]) -> None:
    custom = client.CustomObjectsApi(rn.api_client)
    for rail, subnet in RAILS.items():
        config = {"cniVersion": "1.0.0", "type": "railnet-macvlan", "master": nics[rail],
                  "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": subnet}]]}}
        body = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": rail}, "spec": {"config": json.dumps(config)}}
        custom.create_namespaced_custom_object(*NAD_API[:2], ns, NAD_API[2], body)


def with_rails(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["metadata"]["annotations"] = {"k8s.v1.cni.cncf.io/networks": "rail0, rail1"}
    return manifest


def addresses(rn: RealNode, ns: str, pod: str) -> dict[str, str]:
    """{interface: IPv4 address} as the pod itself shows them."""
    out = json.loads(_exec(rn, ns, pod, "ip", "-4", "-j", "addr"))
    return {link["ifname"]: a["local"] for link in out for a in link.get("addr_info", [])
            if link["ifname"] != "lo"}


def sandbox_pid(rn: RealNode, ns: str, pod: str) -> int:
    lay = rn.layout
    ids = node.crictl(lay, "pods", "--namespace", ns, "--name", pod, "-q").stdout.split()
    assert len(ids) == 1, ids
    return int(json.loads(node.crictl(lay, "inspectp", ids[0]).stdout)["info"]["pid"])


def in_netns(pid: int, script: str, timeout: float = 30) -> subprocess.Popen[str]:
    """Run a Python script (this venv, so scapy is there) inside a pod's network namespace."""
    return subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", textwrap.dedent(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


SNIFF = """
    import collections, json, sys
    from scapy.all import UDP, sniff
    from scapy.contrib.roce import BTH
    seen = collections.Counter()
    def count(pkt):
        if UDP in pkt and pkt[UDP].dport == {port} and BTH in pkt:
            seen[pkt.sniffed_on] += 1
    sniff(iface=["eth0", "net1", "net2"], prn=count, store=False, timeout={seconds},
          started_callback=lambda: print("ready", flush=True))
    print(json.dumps(seen), flush=True)
"""

SEND = """
    from scapy.all import IP, UDP, Ether, Raw, sendp
    from scapy.contrib.roce import BTH, opcode
    frame = (Ether(dst="{dst_mac}") / IP(src="{src}", dst="{dst}", flags="DF") /
             UDP(sport=49152, dport={port}, chksum=0) /
             BTH(opcode=opcode("RC", "SEND_ONLY")[0], dqpn=0x11, psn=7) / Raw(b"x" * 64))
    sendp(frame, iface="net1", count={count}, verbose=False)
"""


def test_pods_with_two_rails_talk_over_each_and_leave_nothing(railnet_node: RailnetOnNode, ns: str) -> None:
    rn = railnet_node.rn
    core = rn.core
    make_nads(rn, ns, railnet_node.nics)
    core.create_namespaced_pod(ns, with_rails(h.web_pod("server")))
    core.create_namespaced_pod(ns, with_rails(h.sleeper("client")))
    server = h.running(core, ns, "server")
    h.running(core, ns, "client")
    served, asking = addresses(rn, ns, "server"), addresses(rn, ns, "client")
    assert sorted(served) == ["eth0", "net1", "net2"], served
    assert served["eth0"] == server.status.pod_ip and h.in_pod_cidr(served["eth0"], str(rn.info["pod_cidr"]))
    for ifname, rail in (("net1", "rail0"), ("net2", "rail1")):
        assert h.in_pod_cidr(served[ifname], RAILS[rail]) and h.in_pod_cidr(asking[ifname], RAILS[rail])

    # network-status says what the pod has, in order: the primary, then the rails.
    status = json.loads(core.read_namespaced_pod("server", ns).metadata.annotations[
        "k8s.v1.cni.cncf.io/network-status"])
    assert [(s["name"], s["interface"], s.get("default", False)) for s in status] == [
        ("railnet-primary", "eth0", True), (f"{ns}/rail0", "net1", False), (f"{ns}/rail1", "net2", False)]
    assert {s["interface"]: s["ips"] for s in status} == {k: [v] for k, v in served.items()}

    for ifname in ("eth0", "net1", "net2"):  # TCP over the primary and over each rail
        assert _fetch(rn, ns, "client", f"http://{served[ifname]}:8080/") == "200", ifname

    # RoCEv2 frames (UDP 4791 + InfiniBand BTH) sent on rail 0 arrive on the server's rail 0 only.
    server_pid, client_pid = sandbox_pid(rn, ns, "server"), sandbox_pid(rn, ns, "client")
    mac = json.loads(_exec(rn, ns, "server", "ip", "-j", "link", "show", "net1"))[0]["address"]
    sniffer = in_netns(server_pid, SNIFF.format(port=ROCE_PORT, seconds=8))
    assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready", sniffer.stderr
    sender = in_netns(client_pid, SEND.format(dst_mac=mac, src=asking["net1"], dst=served["net1"], port=ROCE_PORT,
                                              count=20))
    assert sender.wait(timeout=30) == 0, sender.communicate()[1]
    out, err = sniffer.communicate(timeout=30)
    assert sniffer.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"net1": 20}, (out, err)

    # Deleting the pods releases every rail address and leaves no macvlan behind.
    for pod in ("server", "client"):
        core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
    for pod in ("server", "client"):
        h.gone(core, ns, pod)
    kubeutil.wait_for(lambda: railnet_node.allocations() == 0, 60, "rail addresses released")
    kubeutil.wait_for(lambda: not h.netns_mounts(rn.layout), 60, "pod netns removed")
    assert os.path.exists(f"/sys/class/net/{railnet_node.nics['rail0']}")  # the NICs themselves stay


def test_a_broken_rail_fails_the_sandbox_with_the_cni_error_and_leaks_nothing(railnet_node: RailnetOnNode,
                                                                               ns: str) -> None:
    rn = railnet_node.rn
    core = rn.core
    make_nads(rn, ns, {**railnet_node.nics, "rail1": "rnn-no-such-nic"})
    core.create_namespaced_pod(ns, with_rails(h.sleeper("broken")))

    def sandbox_error() -> str | None:
        events = core.list_namespaced_event(ns, field_selector="involvedObject.name=broken").items
        return next((e.message for e in events if e.reason == "FailedCreatePodSandBox"), None)

    message = kubeutil.wait_for(sandbox_error, 120, "kubelet's FailedCreatePodSandBox event")
    assert f"{ns}/rail1" in message and "rnn-no-such-nic" in message, message  # names the network and the NIC
    assert core.read_namespaced_pod("broken", ns).status.phase == "Pending"
    core.delete_namespaced_pod("broken", ns, grace_period_seconds=0)
    h.gone(core, ns, "broken")
    kubeutil.wait_for(lambda: railnet_node.allocations() == 0, 60, "rail 0's address rolled back")
    kubeutil.wait_for(lambda: not h.netns_mounts(rn.layout), 60, "sandbox netns removed")
    assert h.bridge_ports(rn.layout.bridge) == set(), "the primary's veth was rolled back too"


def test_a_network_bound_to_a_device_resource_gets_the_pods_device(railnet_node: RailnetOnNode, ns: str) -> None:
    """Multus's resourceName: the kubelet allocates a device (from a device plugin) to the pod, and the
    network bound to that resource is attached with it: deviceID to the delegate, device-info in status."""
    rn = railnet_node.rn
    core = rn.core
    resource, devices = "railnet.io/rail0-vf", ["0000:17:00.2", "0000:17:00.3"]
    custom = client.CustomObjectsApi(rn.api_client)
    config = {"cniVersion": "1.0.0", "type": "railnet-macvlan", "master": railnet_node.nics["rail0"],
              "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": RAILS["rail0"]}]]}}
    custom.create_namespaced_custom_object(*NAD_API[:2], ns, NAD_API[2], {
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "vf-rail", "annotations": {"k8s.v1.cni.cncf.io/resourceName": resource}},
        "spec": {"config": json.dumps(config)}})
    with DevicePlugin(rn.layout.kubelet_root, resource, devices):
        kubeutil.wait_for(lambda: (core.read_node(rn.name).status.allocatable or {}).get(resource) == "2", 60,
                          f"{resource} advertised by the kubelet")
        manifest = h.sleeper("holder")
        manifest["metadata"]["annotations"] = {"k8s.v1.cni.cncf.io/networks": "vf-rail"}
        manifest["spec"]["containers"][0]["resources"] = {"limits": {resource: "1"}}
        core.create_namespaced_pod(ns, manifest)
        h.running(core, ns, "holder")
        status = json.loads(core.read_namespaced_pod("holder", ns).metadata.annotations[
            "k8s.v1.cni.cncf.io/network-status"])
        rail = next(s for s in status if s["interface"] == "net1")
        assert rail["device-info"]["pci"]["pci-address"] in devices, rail
        core.delete_namespaced_pod("holder", ns, grace_period_seconds=0)
        h.gone(core, ns, "holder")
    kubeutil.wait_for(lambda: railnet_node.allocations() == 0, 60, "the rail address released")
