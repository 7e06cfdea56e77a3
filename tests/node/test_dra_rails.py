"""A DRA claim's NIC as the pod's rail interface, on the real node (kubelet + containerd + runc).

One agent is both the node's DRA driver (rdma.railnet.io) and the CNI meta plugin (`railnet
install-cni` into the node's CNI dirs). The node's NICs are the hgx-h100 fixture sysfs, whose eight
ConnectX-7 netdevs are pointed at eight veth pairs this module creates (no RoCE hardware here), and
fixture RDMA character devices (mknod). A fixture GPU driver (railnet.dev.fixture_gpu_driver) serves
the fixture's GPUs. kube-scheduler allocates the claims (`matchAttribute` on the switch attribute);
the kubelet prepares them through both drivers; the meta plugin puts the pod's `net1` on the
claim's NIC (a macvlan whose parent is exactly that NIC's veth), writes the claim's networkData, and
limits egress for a bandwidth share. Own module: its own cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, dynamic

from cni.linux.netns import NetNS
from cni.meta import egress
from netmanager.dra import DRIVER
from netmanager.dra.prepare import ClaimStore
from netmanager.dra.slices import device_name, slice_name
from netmanager.topology.discover import discover
from railnet.dev import fixture_gpu
from railnet.dev.fixture_gpu_driver import NVIDIA_MAJOR, NVIDIACTL_MINOR, FixtureGpuDriver
from railnet.dev.fixtures import build_fixture
from railnet.dev.lab import AgentProcess, Lab
from tests.kube import kubeutil
from tests.node import helpers as h
from tests.node.conftest import RealNode
from tests.node.test_dra import char_devices, events, rail
from tests.node.test_meta_on_node import NAD_API, sandbox_pid
from tests.unit.test_dra_prepare import rdma_dev_tree

GPU = fixture_gpu.DRIVER
SUBNET = "10.76.0.0/24"
NETWORKS = "k8s.v1.cni.cncf.io/networks"


def point_netdev(sysfs: Path, pci_address: str, netdev: str) -> None:
    """Make the fixture NIC at `pci_address` have the netdev `netdev` (a real veth on the host)."""
    device = (sysfs / "bus" / "pci" / "devices" / pci_address).resolve()
    (old,) = list((device / "net").iterdir())
    old.rename(device / "net" / netdev)
    (sysfs / "class" / "net" / old.name).unlink()
    (sysfs / "class" / "net" / netdev).symlink_to(Path("../../") / (device / "net" / netdev).relative_to(sysfs))
    for ib in (device / "infiniband").iterdir():
        ndevs = ib / "ports" / "1" / "gid_attrs" / "ndevs" / "0"
        if ndevs.exists():
            ndevs.write_text(netdev + "\n")


class RailsOnNode:
    """The agent as DRA driver + meta plugin, the fixture NICs on veths, the fixture GPU driver."""

    def __init__(self, rn: RealNode, lab: Lab) -> None:
        self.rn = rn
        self.tmp = Path(tempfile.mkdtemp(prefix="rn-rails-"))
        self.sysfs, self.dev = self.tmp / "sys", self.tmp / "dev"
        build_fixture("hgx-h100", self.sysfs)
        self.veths: dict[str, str] = {}  # PCI address -> host veth standing for the NIC
        for nic in discover(str(self.sysfs), node_name=rn.name).nics:
            veth = lab.nic(f"r{len(self.veths)}")
            point_netdev(self.sysfs, nic.pci_address, veth)
            self.veths[nic.pci_address] = veth
        self.topology = discover(str(self.sysfs), node_name=rn.name)
        assert [n.name for n in self.topology.nics] == list(self.veths.values())
        rdma_dev_tree(self.sysfs, self.dev)
        # The shim follows an agentSocket only below /run/railnet/: the agent's root lives there.
        self.root = Path("/run/railnet") / f"dra-rails-{uuid.uuid4().hex[:8]}"
        self.agent = AgentProcess(self.root, sysfs=self.sysfs)
        self.agent.args = ["--kubeconfig", str(rn.cluster.kubeconfig), "--node-name", rn.name, "--dra-driver",
                           "--kubelet-dir", str(rn.layout.kubelet_root), "--cdi-dir", str(rn.layout.cdi_dir),
                           "--dev-root", str(self.dev), "--dra-resync", "5", "--reconcile-interval", "0",
                           "--publish-topology", "60"]  # railnet's scheduler maps devices by it
        lab.agents.append(self.agent)
        self.resource = client.ResourceV1Api(rn.api_client)
        self.gpus = FixtureGpuDriver(rn.api_client, rn.name, rn.layout.kubelet_root, rn.layout.cdi_dir,
                                     self.tmp / "gpudev", self.topology)

    def start(self) -> None:
        self.agent.start(timeout=60)
        kubeutil.wait_for(lambda: "registered with the kubelet" in self.log(), 90, "the kubelet registering the "
                          f"agent; log:\n{self.log()[-2000:]}", interval=0.5)
        self.install("--agent-socket", str(self.agent.socket))
        self.gpus.start()

    def stop(self) -> None:
        self.gpus.stop()
        self.install("--uninstall")
        self.agent.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def install(self, *extra: str) -> None:
        lay = self.rn.layout
        proc = subprocess.run([sys.executable, "-m", "railnet.cli", "install-cni", "--dest", str(lay.cni_bin),
                               "--conf-dir", str(lay.cni_conf), *extra], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr + proc.stdout

    def log(self) -> str:
        return self.agent.log_path.read_text() if self.agent.log_path.exists() else ""

    def db(self, query: str) -> int:
        import sqlite3

        with sqlite3.connect(self.agent.db_path) as db:
            return int(db.execute(query).fetchone()[0])

    def allocations(self) -> int:
        return self.db("SELECT COUNT(*) FROM ipam_allocation")

    def records(self) -> int:
        return self.db("SELECT COUNT(*) FROM attachment")

    def store_for_tests(self) -> ClaimStore:
        """The agent's prepared-record store (read by set_network_data's callers only through it)."""
        return ClaimStore(self.agent.state_dir / "dra" / "claims")

    def prepared(self) -> list[str]:
        d = self.agent.state_dir / "dra" / "claims"
        return sorted(p.name for p in d.glob("*.json")) if d.exists() else []

    def claim_of(self, ns: str, pod: str) -> dict[str, Any]:
        status = self.rn.core.read_namespaced_pod(pod, ns).status
        name = next(s.resource_claim_name for s in status.resource_claim_statuses or [])
        return dict(json.loads(self.resource.read_namespaced_resource_claim(name, ns, _preload_content=False).data))


@pytest.fixture(scope="module")
def rails(real_node: RealNode) -> Iterator[RailsOnNode]:
    dyn = dynamic.DynamicClient(real_node.api_client)
    kubeutil.apply(dyn, kubeutil.load(sorted((kubeutil.DEPLOY / "crds").glob("*.yaml"))))
    resource = client.ResourceV1Api(real_node.api_client)
    classes = {DRIVER: DRIVER, GPU: GPU}
    for name, driver in classes.items():
        resource.create_device_class(fixture_gpu.device_class(name, driver))
    with Lab("rdr") as lab:
        on = RailsOnNode(real_node, lab)
        try:
            on.start()
            yield on
        finally:
            on.stop()
            for name in classes:
                resource.delete_device_class(name)


def rail_nad(rn: RealNode, ns: str, name: str = "rail", plugin: str = "railnet-macvlan") -> None:
    """A NAD without a parent NIC: the claim names it."""
    config = {"cniVersion": "1.0.0", "type": plugin, "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": SUBNET}]]}}
    client.CustomObjectsApi(rn.api_client).create_namespaced_custom_object(*NAD_API[:2], ns, NAD_API[2], {
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": {"name": name},
        "spec": {"config": json.dumps(config)}})


def claim_template(on: RailsOnNode, ns: str, name: str, requests: list[dict[str, Any]],
                   constraints: list[dict[str, Any]] | None = None) -> None:
    devices: dict[str, Any] = {"requests": requests}
    if constraints:
        devices["constraints"] = constraints
    on.resource.create_namespaced_resource_claim_template(ns, {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": name},
        "spec": {"spec": {"devices": devices}}})


def nic_request(selector: str | None = None, bandwidth: str | None = None) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": DRIVER}
    if selector:
        exactly["selectors"] = [{"cel": {"expression": selector}}]
    if bandwidth:
        exactly["capacity"] = {"requests": {f"{DRIVER}/bandwidth": bandwidth}}
    return {"name": "nic", "exactly": exactly}


def gpu_request(index: int) -> dict[str, Any]:
    return {"name": "gpu", "exactly": {"deviceClassName": GPU, "selectors": [
        {"cel": {"expression": f'device.attributes["{GPU}"].index == {index}'}}]}}


def rail_pod(name: str, template: str, networks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    manifest = h.sleeper(name)
    manifest["metadata"]["annotations"] = {NETWORKS: json.dumps(networks if networks is not None else [
        {"name": "rail", "interface": "net1", "resourceClaim": {"claimName": "devs", "requestName": "nic"}}])}
    manifest["spec"]["resourceClaims"] = [{"name": "devs", "resourceClaimTemplateName": template}]
    manifest["spec"]["containers"][0]["resources"] = {"claims": [{"name": "devs"}]}
    return manifest


def pod_link(rn: RealNode, ns: str, pod: str, ifname: str = "net1") -> dict[str, Any]:
    """`ip -d -j link show <ifname>` inside the pod's network namespace (from the host)."""
    out = subprocess.run(["nsenter", f"--net=/proc/{sandbox_pid(rn, ns, pod)}/ns/net", "ip", "-d", "-j", "link",
                          "show", ifname], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout)[0])


def host_ifindex(netdev: str) -> int:
    return int(Path(f"/sys/class/net/{netdev}/ifindex").read_text())


def pod_rate(rn: RealNode, ns: str, pod: str, ifname: str = "net1") -> int | None:
    with NetNS(f"/proc/{sandbox_pid(rn, ns, pod)}/ns/net") as netns:
        return egress.current(netns, ifname)


def network_data(claim: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in (claim.get("status") or {}).get("devices") or [] if d.get("driver") == DRIVER]


def delete_pods(on: RailsOnNode, ns: str, pods: tuple[str, ...]) -> None:
    core = on.rn.core
    for pod in pods:
        core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
    for pod in pods:
        h.gone(core, ns, pod)
    kubeutil.wait_for(lambda: on.allocations() == 0 and on.records() == 0 and on.prepared() == [], 90,
                      "rail addresses, attachment records and prepared claims gone")
    kubeutil.wait_for(lambda: not h.netns_mounts(on.rn.layout), 60, "pod netns removed")


def test_gpu_and_nic_claim_puts_the_rail_on_exactly_the_allocated_nic(rails: RailsOnNode, ns: str) -> None:
    rn, core = rails.rn, rails.rn.core
    rail_nad(rn, ns)
    gpu = 5
    claim_template(rails, ns, "gpu-nic", [gpu_request(gpu), nic_request()],
                   [{"requests": ["gpu", "nic"], "matchAttribute": f"{DRIVER}/pcieSwitch"}])
    core.create_namespaced_pod(ns, rail_pod("trainer", "gpu-nic"))
    pod = h.running(core, ns, "trainer", timeout=240)

    claim = rails.claim_of(ns, "trainer")
    results = {r["request"]: r for r in claim["status"]["allocation"]["devices"]["results"]}
    assert (results["gpu"]["driver"], results["gpu"]["device"]) == (GPU, f"gpu-{gpu}")
    nic = next(n for n in rails.topology.nics if device_name(n.pci_address) == results["nic"]["device"])
    assert nic.pcie_switch == rails.topology.gpus[gpu].pcie_switch  # the NIC under the GPU's switch

    # the container sees exactly the claim's character devices, from both drivers
    assert char_devices(rn, ns, "trainer") == {f"uverbs{gpu}": (231, 192 + gpu), "rdma_cm": (10, 58)}
    seen = char_devices(rn, ns, "trainer", "/dev")
    assert {k: v for k, v in seen.items() if k.startswith("nvidia")} == {
        f"nvidia{gpu}": (NVIDIA_MAJOR, gpu), "nvidiactl": (NVIDIA_MAJOR, NVIDIACTL_MINOR)}

    # net1 is a macvlan whose parent is exactly the allocated NIC's netdev (its veth on the host)
    link = pod_link(rn, ns, "trainer")
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["link_index"] == host_ifindex(rails.veths[nic.pci_address]), (link, rails.veths)
    assert pod_rate(rn, ns, "trainer") is None  # the whole NIC: no limit

    status = json.loads(pod.metadata.annotations["k8s.v1.cni.cncf.io/network-status"])
    net1 = next(s for s in status if s["interface"] == "net1")
    assert net1["name"] == f"{ns}/rail" and h.in_pod_cidr(net1["ips"][0], SUBNET)
    assert net1["device-info"]["pci"] == {"pci-address": nic.pci_address, "rdma-device": nic.rdma_device}

    # the claim's status says which interface its NIC became in the pod
    (entry,) = network_data(rails.claim_of(ns, "trainer"))
    assert (entry["pool"], entry["device"]) == (rn.name, results["nic"]["device"])
    assert entry["networkData"] == {"interfaceName": "net1", "ips": [f"{net1['ips'][0]}/24"],
                                    "hardwareAddress": net1["mac"]}

    delete_pods(rails, ns, ("trainer",))
    assert not list(rn.layout.cdi_dir.glob("*.json")), "both drivers unprepared"


def test_two_pods_sharing_a_nic_by_bandwidth_each_get_their_rate(rails: RailsOnNode, ns: str) -> None:
    rn, core = rails.rn, rails.rn.core
    rail_nad(rn, ns)
    claim_template(rails, ns, "quarter", [nic_request(rail(4), bandwidth="100G")])
    claim_template(rails, ns, "half", [nic_request(rail(4), bandwidth="200G")])
    core.create_namespaced_pod(ns, rail_pod("small", "quarter"))
    core.create_namespaced_pod(ns, rail_pod("large", "half"))
    for pod in ("small", "large"):
        h.running(core, ns, pod, timeout=240)
    veth = rails.veths["0000:9b:00.0"]  # rail 4
    shares = set()
    for pod, rate in (("small", 100 * 10**9), ("large", 200 * 10**9)):
        assert pod_link(rn, ns, pod)["link_index"] == host_ifindex(veth)
        assert pod_rate(rn, ns, pod) == rate, pod
        (entry,) = network_data(rails.claim_of(ns, pod))
        assert entry["networkData"]["interfaceName"] == "net1" and entry["shareID"]
        shares.add(entry["shareID"])
    assert len(shares) == 2
    delete_pods(rails, ns, ("small", "large"))


def test_bad_claim_networks_fail_the_sandbox_and_leave_nothing(rails: RailsOnNode, ns: str) -> None:
    rn, core = rails.rn, rails.rn.core
    rail_nad(rn, ns)
    rail_nad(rn, ns, "vf-rail", plugin="railnet-sriov")
    for n in (3, 6, 7):  # each pod its own whole NIC: all four reach their sandbox at once
        claim_template(rails, ns, f"nic{n}", [nic_request(rail(n))])
    claim_template(rails, ns, "gpu-only", [gpu_request(6)])
    bad = {
        "no-such-claim": (rail_pod("no-such-claim", "nic3", [{"name": "rail", "resourceClaim": {
                              "claimName": "nics"}}]), "has no resource claim 'nics'"),
        "gpu-claim": (rail_pod("gpu-claim", "gpu-only", [{"name": "rail", "resourceClaim": {"claimName": "devs"}}]),
                      f"holds no {DRIVER} device (its devices are of {GPU})"),
        "no-request": (rail_pod("no-request", "nic6", [{"name": "rail", "resourceClaim": {
                           "claimName": "devs", "requestName": "gpu"}}]), "has no request 'gpu'"),
        "pf-as-vf": (rail_pod("pf-as-vf", "nic7", [{"name": "vf-rail", "resourceClaim": {"claimName": "devs"}}]),
                     "attaches VFs only"),
    }
    for manifest, _ in bad.values():
        core.create_namespaced_pod(ns, manifest)
    for pod, (_, text) in bad.items():
        def failed(pod: str = pod) -> str | None:
            return next((m for r, m in events(rn, ns, pod) if r == "FailedCreatePodSandBox"), None)

        message = kubeutil.wait_for(failed, 180, f"FailedCreatePodSandBox of {pod}", interval=1)
        assert text in message, (pod, message)
    for pod in bad:
        assert core.read_namespaced_pod(pod, ns).status.phase == "Pending"  # type: ignore[union-attr]
    # refused before any delegate ran: no address, no attachment record
    assert rails.allocations() == 0 and rails.records() == 0
    delete_pods(rails, ns, tuple(bad))


def token_kubeconfig(rn: RealNode, token: str, path: Path) -> Path:
    """A kubeconfig for the same API server that authenticates with `token`."""
    import yaml

    admin = yaml.safe_load(rn.cluster.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}], "current-context": "sa"}))
    return path


def test_network_data_needs_the_driver_subresource_for_a_node_bound_service_account(rails: RailsOnNode,
                                                                                      ns: str) -> None:
    """The RBAC docs/dra.md gives the agent, checked against the real API server: with
    resourceclaims/status alone the networkData patch is refused; with `associated-node:patch` on
    resourceclaims/driver for rdma.railnet.io it is allowed for a token bound to the claim's node, and
    still refused for the same ServiceAccount's token that is not node-bound."""
    from cni.meta.claims import ClaimDevice
    from netmanager.dra.attach import ClaimAttachments
    from netmanager.dra.driver import KubeResources

    rn, core = rails.rn, rails.rn.core
    rail_nad(rn, ns)
    claim_template(rails, ns, "nic", [nic_request(rail(2))])
    core.create_namespaced_pod(ns, rail_pod("holder", "nic"))
    h.running(core, ns, "holder", timeout=240)
    claim = rails.claim_of(ns, "holder")
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    device = ClaimDevice(ns, claim["metadata"]["name"], claim["metadata"]["uid"], "nic", DRIVER, result["pool"],
                         result["device"], "", None, False, share_id=result.get("shareID"))

    rbac = client.RbacAuthorizationV1Api(rn.api_client)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "agent"}})
    role = f"{ns}-claim-status"
    status_rule = {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims", "resourceclaims/status"],
                   "verbs": ["get", "patch"]}
    driver_rule = {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims/driver"],
                   "resourceNames": [DRIVER], "verbs": ["associated-node:patch"]}
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": [status_rule]})
    rbac.create_cluster_role_binding({"metadata": {"name": role},
                                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                  "name": role},
                                      "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]})
    tmp = Path(tempfile.mkdtemp(prefix="rn-rbac-"))
    try:
        node_uid = core.read_node(rn.name).metadata.uid

        def writer(bound: bool) -> ClaimAttachments:
            spec: dict[str, Any] = {"expirationSeconds": 600}
            if bound:
                spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Node", "name": rn.name, "uid": node_uid}
            token = core.create_namespaced_service_account_token("agent", ns, {"spec": spec}).status.token
            api = KubeResources(token_kubeconfig(rn, token, tmp / f"kubeconfig-{bound}"))
            return ClaimAttachments(rn.name, rails.store_for_tests(), api, lambda: rails.topology)

        def outcome(bound: bool, name: str) -> str:
            try:
                writer(bound).set_network_data(device, {"interfaceName": name})
                return "allowed"
            except client.exceptions.ApiException as exc:
                # the API server answers 422 Invalid with a Forbidden cause on status.devices
                assert exc.status == 422, exc
                assert 'changing status.devices requires resource=\\"resourceclaims/driver\\"' in str(exc.body), \
                    exc.body
                assert "must be an allocated device" not in str(exc.body), exc.body
                return "forbidden"

        def can_read() -> bool | None:
            try:
                return writer(True).api.claim(ns, device.claim_name) is not None
            except client.exceptions.ApiException as exc:
                assert exc.status == 403, exc
                return None

        kubeutil.wait_for(can_read, 30, "the binding taking effect (the claim readable)", interval=1)
        assert outcome(True, "status-only") == "forbidden"  # resourceclaims/status alone is not enough
        rbac.patch_cluster_role(role, {"rules": [status_rule, driver_rule]})
        kubeutil.wait_for(lambda: outcome(True, "node-bound") == "allowed", 30, "the role taking effect", interval=1)
        (entry,) = network_data(rails.claim_of(ns, "holder"))
        assert entry["networkData"] == {"interfaceName": "node-bound"}
        assert outcome(False, "not-bound") == "forbidden"  # associated-node needs the node binding
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)
        shutil.rmtree(tmp, ignore_errors=True)
    delete_pods(rails, ns, ("holder",))


def test_a_nic_whose_link_goes_down_is_tainted_and_no_new_claim_gets_it(rails: RailsOnNode, ns: str) -> None:
    rn, core = rails.rn, rails.rn.core
    rail_nad(rn, ns)
    name = "nic-0000-3b-00-0"  # rail 1, mlx5_1
    state = rails.sysfs / "class" / "infiniband" / "mlx5_1" / "ports" / "1" / "state"

    def taints() -> list[dict[str, Any]] | None:
        obj = json.loads(rails.resource.read_resource_slice(slice_name(rn.name), _preload_content=False).data)
        return next(d.get("taints") for d in obj["spec"]["devices"] if d["name"] == name)

    state.write_text("1: DOWN\n")
    try:
        found = kubeutil.wait_for(taints, 60, f"{name} tainted in the slice", interval=1)
        assert found is not None and found[0].pop("timeAdded")  # the API server stamps it
        assert found == [{"key": f"{DRIVER}/link-down", "value": "DOWN", "effect": "NoSchedule"}]
        claim_template(rails, ns, "nic1", [nic_request(rail(1))])
        core.create_namespaced_pod(ns, rail_pod("waits", "nic1"))

        def unschedulable() -> str | None:
            return next((m for r, m in events(rn, ns, "waits") if r == "FailedScheduling"), None)

        message = kubeutil.wait_for(unschedulable, 120, "FailedScheduling of the pod wanting the down NIC", interval=1)
        assert "cannot allocate all claims" in message, message
        assert core.read_namespaced_pod("waits", ns).status.phase == "Pending"  # type: ignore[union-attr]
    finally:
        state.write_text("4: ACTIVE\n")
    kubeutil.wait_for(lambda: taints() is None, 60, f"{name}'s taint removed", interval=1)
    h.running(core, ns, "waits", timeout=240)  # the link is back: the claim is allocated, the rail attached
    assert pod_link(rn, ns, "waits")["link_index"] == host_ifindex(rails.veths["0000:3b:00.0"])
    delete_pods(rails, ns, ("waits",))


def test_railnet_scheduler_allocates_a_gpu_and_nic_claim_under_one_switch(rails: RailsOnNode, ns: str) -> None:
    """The first test's pod with `schedulerName: railnet` and no matchAttribute constraint: railnet's
    scheduler (a subprocess, leader election off) writes the claim's allocation and reservedFor and
    binds the pod with its allocation annotation; the core puts the NIC under the GPU's switch; the
    kubelet prepares both drivers' devices and the meta plugin attaches exactly that NIC."""
    import os
    import signal

    from scheduler.live.objects import ALLOCATION_ANNOTATION

    rn, core = rails.rn, rails.rn.core
    dyn = dynamic.DynamicClient(rn.api_client)
    kubeutil.apply(dyn, kubeutil.load(sorted((kubeutil.DEPLOY / "scheduler" / "crds").glob("*.yaml"))))
    custom = client.CustomObjectsApi(rn.api_client)
    kubeutil.wait_for(lambda: custom.get_cluster_custom_object("railnet.io", "v1alpha1", "nodetopologies", rn.name),
                      60, "the agent's NodeTopology")
    log = rails.tmp / "scheduler.log"
    with log.open("wb") as out:
        sched = subprocess.Popen([sys.executable, "-m", "railnet.cli", "scheduler", f"--kubeconfig={rn.cluster.kubeconfig}",
                                  "--scheduler-name=railnet", "--no-leader-elect", f"--identity=test-{ns}"],
                                 stdout=out, stderr=subprocess.STDOUT,
                                 preexec_fn=lambda: os.setpgid(0, 0))
    try:
        rail_nad(rn, ns)
        gpu = 5
        claim_template(rails, ns, "gpu-nic", [gpu_request(gpu), nic_request()])  # no constraint: the core aligns
        manifest = rail_pod("trainer", "gpu-nic")
        manifest["spec"]["schedulerName"] = "railnet"
        core.create_namespaced_pod(ns, manifest)
        try:
            pod = h.running(core, ns, "trainer", timeout=240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nscheduler log:\n{log.read_text()[-3000:]}") from None
        assert pod.spec.node_name == rn.name

        # railnet's scheduler wrote the allocation and bound the pod (kube-scheduler ignores schedulerName railnet)
        claim = rails.claim_of(ns, "trainer")
        results = {r["request"]: r for r in claim["status"]["allocation"]["devices"]["results"]}
        assert set(results) == {"gpu", "nic"}
        assert (results["gpu"]["driver"], results["gpu"]["device"], results["gpu"]["pool"]) == (GPU, f"gpu-{gpu}",
                                                                                               rn.name)
        assert (results["nic"]["driver"], results["nic"]["pool"]) == (DRIVER, rn.name)
        assert [r["uid"] for r in claim["status"]["reservedFor"]] == [pod.metadata.uid]
        nic = next(n for n in rails.topology.nics if device_name(n.pci_address) == results["nic"]["device"])
        annotation = json.loads(pod.metadata.annotations[ALLOCATION_ANNOTATION])
        assert annotation["node"] == rn.name and annotation["topologyKnown"] is True, annotation
        assert [g["pciAddress"] for g in annotation["gpus"]] == [rails.topology.gpus[gpu].pci_address], annotation
        assert [n["pciAddress"] for n in annotation["nics"]] == [nic.pci_address], annotation
        assert [r["tierName"] for r in annotation["rails"]] and annotation["rails"][0]["tier"] == 1, annotation
        by_kube = [(e.reason, e.message) for e in core.list_namespaced_event(
            ns, field_selector="involvedObject.name=trainer").items
            if "default-scheduler" in (e.reporting_component or "", e.source.component if e.source else "")]
        assert not by_kube, by_kube

        # GPU and NIC under the same PCIe switch, as the two drivers' slices say
        slices = [json.loads(rails.resource.read_resource_slice(s.metadata.name, _preload_content=False).data)
                  for s in rails.resource.list_resource_slice().items]

        def switch(driver: str, device: str) -> str:
            obj = next(s for s in slices if s["spec"]["driver"] == driver and s["spec"]["nodeName"] == rn.name)
            attrs = next(d for d in obj["spec"]["devices"] if d["name"] == device)["attributes"]
            # the NIC driver's own attributes may be stored unqualified; the GPU driver's carry the domain
            value = attrs.get(f"{DRIVER}/pcieSwitch") or (attrs.get("pcieSwitch") if driver == DRIVER else None)
            assert value is not None, (driver, device, attrs)
            return str(value["string"])

        assert switch(GPU, f"gpu-{gpu}") == switch(DRIVER, results["nic"]["device"]) == \
            rails.topology.gpus[gpu].pcie_switch

        # the container sees exactly the claim's character devices, from both drivers
        nic_index = rails.topology.nics.index(nic)
        assert char_devices(rn, ns, "trainer") == {f"uverbs{nic_index}": (231, 192 + nic_index), "rdma_cm": (10, 58)}
        seen = char_devices(rn, ns, "trainer", "/dev")
        assert {k: v for k, v in seen.items() if k.startswith("nvidia")} == {
            f"nvidia{gpu}": (NVIDIA_MAJOR, gpu), "nvidiactl": (NVIDIA_MAJOR, NVIDIACTL_MINOR)}

        # net1 sits on exactly the allocated NIC
        link = pod_link(rn, ns, "trainer")
        assert link["linkinfo"]["info_kind"] == "macvlan"
        assert link["link_index"] == host_ifindex(rails.veths[nic.pci_address]), (link, rails.veths)
        (entry,) = network_data(rails.claim_of(ns, "trainer"))
        assert (entry["device"], entry["networkData"]["interfaceName"]) == (results["nic"]["device"], "net1")
        assert len(rails.prepared()) == 1

        delete_pods(rails, ns, ("trainer",))
        assert not list(rn.layout.cdi_dir.glob("*.json")), "both drivers unprepared"
    finally:
        os.killpg(sched.pid, signal.SIGTERM)
        try:
            sched.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(sched.pid, signal.SIGKILL)
            sched.wait(timeout=10)
