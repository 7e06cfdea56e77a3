"""railnet's agent as the DRA driver `rdma.railnet.io` on the real node.

The agent runs on the host with a fixture sysfs (hgx-h100: 8 ConnectX-7, one per PCIe switch) and
fixture RDMA character devices (mknod in a dir this module owns: this kernel has no RDMA devices;
mlx5_7's node is left out on purpose). It registers with the kubelet through its plugin watcher,
publishes the node's ResourceSlice, and kube-scheduler allocates claims from it; the kubelet calls
NodePrepareResources, containerd injects the CDI devices from the node's private CDI dir, and the
container sees exactly the claim's character devices. Own module: its own cluster.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, dynamic

from netmanager.dra import DRIVER, slices
from netmanager.topology.discover import discover
from railnet.dev import fixture_gpu
from railnet.dev.fixture_gpu_driver import NVIDIA_MAJOR, NVIDIACTL_MINOR, FixtureGpuDriver
from railnet.dev.fixtures import build_fixture
from railnet.dev.lab import AgentProcess
from tests.kube import kubeutil
from tests.node import helpers as h
from tests.node.conftest import RealNode
from tests.node.test_real_node import _exec
from tests.unit.test_dra_prepare import rdma_dev_tree

LS_LINE = re.compile(r"^c\S+\s+\d+\s+\S+\s+\S+\s+(\d+),\s+(\d+)\s.*\s(\S+)$")


class DraOnNode:
    def __init__(self, rn: RealNode) -> None:
        self.rn = rn
        self.root = Path(tempfile.mkdtemp(prefix="rn-dra-"))
        self.sysfs, self.dev = self.root / "sys", self.root / "dev"
        build_fixture("hgx-h100", self.sysfs)
        self.uverbs = rdma_dev_tree(self.sysfs, self.dev, skip=("mlx5_7",))
        self.agent = AgentProcess(self.root / "agent", sysfs=self.sysfs)
        self.agent.args = ["--kubeconfig", str(rn.cluster.kubeconfig), "--node-name", rn.name, "--dra-driver",
                           "--kubelet-dir", str(rn.layout.kubelet_root), "--cdi-dir", str(rn.layout.cdi_dir),
                           "--dev-root", str(self.dev), "--dra-resync", "5", "--reconcile-interval", "0",
                           "--no-meta-cache"]
        self.resource = client.ResourceV1Api(rn.api_client)

    @property
    def claims_dir(self) -> Path:
        return self.agent.state_dir / "dra" / "claims"

    def records(self) -> list[str]:
        return sorted(p.name for p in self.claims_dir.glob("*.json")) if self.claims_dir.exists() else []

    def specs(self) -> list[str]:
        return sorted(p.name for p in self.rn.layout.cdi_dir.glob("*.json"))

    def log(self) -> str:
        return self.agent.log_path.read_text() if self.agent.log_path.exists() else ""

    def start(self) -> None:
        mark = self.log().count("registered with the kubelet")
        self.agent.start(timeout=60)
        kubeutil.wait_for(lambda: self.log().count("registered with the kubelet") > mark, 90,
                          f"the kubelet registering {DRIVER}; agent log:\n{self.log()[-3000:]}", interval=0.5)

    def slice(self) -> dict[str, Any] | None:
        try:
            resp = self.resource.read_resource_slice(slices.slice_name(self.rn.name), _preload_content=False)
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(resp.data))

    def topology_nic(self, device: str) -> Any:
        return slices.nic_by_device(discover(str(self.sysfs), node_name=self.rn.name))[device]

    def claim_of(self, ns: str, pod: str) -> dict[str, Any]:
        status = self.rn.core.read_namespaced_pod(pod, ns).status
        name = next(s.resource_claim_name for s in status.resource_claim_statuses or [])
        resp = self.resource.read_namespaced_resource_claim(name, ns, _preload_content=False)
        return dict(json.loads(resp.data))


GPU_DRIVER = fixture_gpu.DRIVER


@pytest.fixture(scope="module")
def dra(real_node: RealNode) -> Iterator[DraOnNode]:
    dyn = dynamic.DynamicClient(real_node.api_client)
    kubeutil.apply(dyn, kubeutil.load(sorted((kubeutil.DEPLOY / "crds").glob("*.yaml"))))
    on = DraOnNode(real_node)
    classes = [DRIVER, "nobody.railnet.test", GPU_DRIVER]
    for name in classes:  # one class railnet serves, one that no driver serves
        on.resource.create_device_class({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                                         "metadata": {"name": name},
                                         "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{name}"'}}]}})
    try:
        on.start()
        yield on
    finally:
        on.agent.stop()
        for name in classes:
            on.resource.delete_device_class(name)
        shutil.rmtree(on.root, ignore_errors=True)


def template(rn: RealNode, ns: str, name: str, cls: str = DRIVER, selector: str | None = None,
             count: int = 1, constraints: list[dict[str, Any]] | None = None, bandwidth: str | None = None) -> None:
    exactly: dict[str, Any] = {"deviceClassName": cls, "count": count}
    if selector:
        exactly["selectors"] = [{"cel": {"expression": selector}}]
    if bandwidth:
        exactly["capacity"] = {"requests": {f"{DRIVER}/bandwidth": bandwidth}}
    devices: dict[str, Any] = {"requests": [{"name": "nic", "exactly": exactly}]}
    if constraints:
        devices["constraints"] = constraints
    client.ResourceV1Api(rn.api_client).create_namespaced_resource_claim_template(ns, {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": name},
        "spec": {"spec": {"devices": devices}}})


def claiming_pod(name: str, tmpl: str) -> dict[str, Any]:
    manifest = h.sleeper(name)
    manifest["spec"]["resourceClaims"] = [{"name": "nic", "resourceClaimTemplateName": tmpl}]
    manifest["spec"]["containers"][0]["resources"] = {"claims": [{"name": "nic"}]}
    return manifest


def rail(n: int) -> str:
    return f'device.attributes["{DRIVER}"].rail == {n}'


def char_devices(rn: RealNode, ns: str, pod: str, where: str = "/dev/infiniband") -> dict[str, tuple[int, int]]:
    """{name: (major, minor)} of the character devices in a dir as the container sees it."""
    out = _exec(rn, ns, pod, "sh", "-c", f"ls -l {where} 2>&1 || true")
    found = {}
    for line in out.splitlines():
        match = LS_LINE.match(line.strip())
        if match:
            found[match.group(3)] = (int(match.group(1)), int(match.group(2)))
    assert found or "No such file" in out, out
    return found


def events(rn: RealNode, ns: str, pod: str) -> list[tuple[str, str]]:
    return [(e.reason, e.message) for e in rn.core.list_namespaced_event(
        ns, field_selector=f"involvedObject.name={pod}").items]


def test_the_node_publishes_its_nics_as_a_resource_slice(dra: DraOnNode) -> None:
    obj = kubeutil.wait_for(dra.slice, 60, "the node's ResourceSlice")
    spec = obj["spec"]
    assert (spec["driver"], spec["nodeName"], spec["pool"]["name"]) == (DRIVER, dra.rn.name, dra.rn.name)
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "Node"
    devices = {d["name"]: d["attributes"] for d in spec["devices"]}
    assert len(devices) == 8
    first = devices["nic-0000-19-00-0"]
    assert first["resource.kubernetes.io/pcieRoot"] == {"string": "pci0000:15"}
    assert first["resource.kubernetes.io/pciBusID"] == {"string": "0000:19:00.0"}
    assert first["resource.kubernetes.io/numaNode"] == {"int": 0}
    assert first[f"{DRIVER}/pcieSwitch"] == {"string": "0000:16:00.0"}
    assert first[f"{DRIVER}/rdmaDevice"] == {"string": "mlx5_0"}
    assert sorted(a[f"{DRIVER}/rail"]["int"] for a in devices.values()) == list(range(8))
    # bandwidth is consumable capacity (the API server keeps quantities in canonical form)
    assert spec["devices"][0]["allowMultipleAllocations"] is True
    assert spec["devices"][0]["capacity"][f"{DRIVER}/bandwidth"] == {"value": "400G",
                                                                    "requestPolicy": {"default": "400G"}}

    # the topology changes (mlx5_6's RDMA device goes away): the slice follows with a new generation
    generation = spec["pool"]["generation"]
    link = dra.sysfs / "class" / "infiniband" / "mlx5_6"
    hidden = dra.root / "mlx5_6.hidden"
    link.rename(hidden)
    try:
        def without() -> dict[str, Any] | None:
            cur = dra.slice()
            return cur if cur and len(cur["spec"]["devices"]) == 7 else None

        shrunk = kubeutil.wait_for(without, 60, "the slice without nic-0000-cd-00-0", interval=0.5)
        assert "nic-0000-cd-00-0" not in {d["name"] for d in shrunk["spec"]["devices"]}
        assert shrunk["spec"]["pool"]["generation"] > generation
    finally:
        hidden.rename(link)
    kubeutil.wait_for(lambda: (cur := dra.slice()) and len(cur["spec"]["devices"]) == 8, 60, "the NIC back")


def test_pod_gets_its_nic_through_cdi_and_an_agent_restart_loses_nothing(dra: DraOnNode, ns: str) -> None:
    rn, core = dra.rn, dra.rn.core
    template(rn, ns, "rail2", selector=rail(2))
    template(rn, ns, "rail3", selector=rail(3))
    core.create_namespaced_pod(ns, claiming_pod("first", "rail2"))
    core.create_namespaced_pod(ns, claiming_pod("second", "rail3"))
    h.running(core, ns, "first", timeout=240)
    h.running(core, ns, "second", timeout=240)

    # kube-scheduler allocated the NIC of rail 2 from the node's pool; the container has exactly its devices
    claim = dra.claim_of(ns, "first")
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (result["driver"], result["pool"], result["device"]) == (DRIVER, rn.name, "nic-0000-4c-00-0")
    assert char_devices(rn, ns, "first") == {"uverbs2": (231, 194), "rdma_cm": (10, 58)}
    assert char_devices(rn, ns, "second") == {"uverbs3": (231, 195), "rdma_cm": (10, 58)}
    uid_first, uid_second = claim["metadata"]["uid"], dra.claim_of(ns, "second")["metadata"]["uid"]
    assert dra.specs() == sorted([f"railnet.io-rdma_{uid_first}.json", f"railnet.io-rdma_{uid_second}.json"])
    assert dra.records() == sorted([f"{uid_first}.json", f"{uid_second}.json"])

    # deleting a pod unprepares its claim: the CDI spec and the record go
    core.delete_namespaced_pod("first", ns, grace_period_seconds=0)
    h.gone(core, ns, "first")
    kubeutil.wait_for(lambda: dra.specs() == [f"railnet.io-rdma_{uid_second}.json"]
                      and dra.records() == [f"{uid_second}.json"], 60, "first's CDI spec and record removed")

    # the agent dies (SIGKILL) between prepare and unprepare; a new one picks up from its state dir
    dra.agent.kill()
    before = len(dra.log())
    dra.start()
    core.delete_namespaced_pod("second", ns, grace_period_seconds=0)
    h.gone(core, ns, "second")
    kubeutil.wait_for(lambda: dra.specs() == [] and dra.records() == [], 90,
                      "second's CDI spec and record removed by the restarted agent")
    unprepared = [json.loads(line) for line in dra.log()[before:].splitlines() if '"msg": "unprepared"' in line]
    assert uid_second in [e["uid"] for e in unprepared], "the new agent did the unprepare"
    kubeutil.wait_for(dra.slice, 60, "the slice back after the restart")


def test_two_pods_share_a_nic_by_bandwidth_and_a_third_waits(dra: DraOnNode, ns: str) -> None:
    rn, core = dra.rn, dra.rn.core
    template(rn, ns, "half-rail4", selector=rail(4), bandwidth="200G")
    pods = ("share-a", "share-b", "share-c")
    for pod in pods:
        core.create_namespaced_pod(ns, claiming_pod(pod, "half-rail4"))

    def two_running() -> list[str] | None:  # any two of the three: the scheduler picks the order
        up = [p.metadata.name for p in core.list_namespaced_pod(ns).items if p.status.phase == "Running"]
        return sorted(up) if len(up) == 2 else None

    running = kubeutil.wait_for(two_running, 240, "two of the three pods Running", interval=1)
    (waiting,) = set(pods) - set(running)
    shares = []
    for pod in running:
        claim = dra.claim_of(ns, pod)
        (result,) = claim["status"]["allocation"]["devices"]["results"]
        assert result["device"] == "nic-0000-9b-00-0" and result["consumedCapacity"] == {f"{DRIVER}/bandwidth": "200G"}
        shares.append(result["shareID"])
        assert char_devices(rn, ns, pod) == {"uverbs4": (231, 196), "rdma_cm": (10, 58)}
    assert len(set(shares)) == 2 and len(dra.specs()) == 2  # one share each, one CDI spec per claim

    def waits() -> str | None:
        return next((m for r, m in events(rn, ns, waiting) if r == "FailedScheduling"), None)

    message = kubeutil.wait_for(waits, 120, "FailedScheduling of the third share", interval=1)
    assert "cannot allocate all claims" in message, message
    assert core.read_namespaced_pod(waiting, ns).status.phase == "Pending"  # type: ignore[union-attr]

    core.delete_namespaced_pod(running[0], ns, grace_period_seconds=0)  # a share frees up: the third runs
    h.running(core, ns, waiting, timeout=240)
    assert char_devices(rn, ns, waiting) == {"uverbs4": (231, 196), "rdma_cm": (10, 58)}
    for pod in (running[1], waiting):
        core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
    for pod in pods:
        h.gone(core, ns, pod)
    kubeutil.wait_for(lambda: dra.specs() == [] and dra.records() == [], 60, "every share unprepared")


def test_bad_claims_give_clear_events_and_prepare_nothing(dra: DraOnNode, ns: str) -> None:
    rn, core = dra.rn, dra.rn.core
    template(rn, ns, "unserved", cls="nobody.railnet.test")  # a class no driver on any node serves
    template(rn, ns, "no-attr", count=2, constraints=[{"requests": ["nic"], "matchAttribute": f"{DRIVER}/noSuchAttr"}])
    template(rn, ns, "too-big", bandwidth="800G")  # more than any NIC has
    template(rn, ns, "rail7", selector=rail(7))  # allocatable, but its character device is missing on the node
    bad = ("unserved", "no-attr", "too-big", "rail7")
    for pod in bad:
        core.create_namespaced_pod(ns, claiming_pod(pod, pod))

    for pod in ("unserved", "no-attr", "too-big"):
        def unschedulable(pod: str = pod) -> str | None:
            return next((m for r, m in events(rn, ns, pod) if r == "FailedScheduling"), None)

        message = kubeutil.wait_for(unschedulable, 120, f"FailedScheduling of {pod}", interval=1)
        assert "cannot allocate all claims" in message, message

    def prepare_failed() -> str | None:
        return next((m for r, m in events(rn, ns, "rail7") if r == "FailedPrepareDynamicResources"), None)

    message = kubeutil.wait_for(prepare_failed, 180, "FailedPrepareDynamicResources of rail7", interval=1)
    assert "nic-0000-de-00-0" in message and "uverbs7 is missing" in message and DRIVER in message, message
    time.sleep(2)
    for pod in bad:
        assert core.read_namespaced_pod(pod, ns).status.phase == "Pending"  # type: ignore[union-attr]
    assert dra.specs() == [] and dra.records() == [], "a failed prepare left something behind"
    for pod in bad:
        core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
    for pod in bad:
        h.gone(core, ns, pod)
    assert dra.specs() == [] and dra.records() == []


@pytest.fixture
def gpus(dra: DraOnNode) -> Iterator[FixtureGpuDriver]:
    rn = dra.rn
    with FixtureGpuDriver(rn.api_client, rn.name, rn.layout.kubelet_root, rn.layout.cdi_dir, dra.root / "gpudev",
                          discover(str(dra.sysfs), node_name=rn.name)) as driver:
        yield driver


def test_gpu_and_nic_claimed_together_on_one_pcie_switch_by_kube_scheduler(dra: DraOnNode,
                                                                         gpus: FixtureGpuDriver, ns: str) -> None:
    """One claim, a GPU from another driver and a NIC from railnet, aligned by kube-scheduler with
    matchAttribute: on railnet's pcieSwitch (the GPU driver publishes the same name) or the standard pcieRoot."""
    rn, core = dra.rn, dra.rn.core
    for name, gpu, key in (("by-switch", 5, f"{DRIVER}/pcieSwitch"), ("by-root", 6, "resource.kubernetes.io/pcieRoot")):
        requests = [{"name": "gpu", "exactly": {"deviceClassName": GPU_DRIVER, "selectors": [
                        {"cel": {"expression": f'device.attributes["{GPU_DRIVER}"].index == {gpu}'}}]}},
                    {"name": "nic", "exactly": {"deviceClassName": DRIVER}}]
        dra.resource.create_namespaced_resource_claim_template(ns, {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": name},
            "spec": {"spec": {"devices": {"requests": requests,
                                          "constraints": [{"requests": ["gpu", "nic"], "matchAttribute": key}]}}}})
        manifest = claiming_pod(name, name)
        manifest["spec"]["resourceClaims"] = [{"name": "devs", "resourceClaimTemplateName": name}]
        manifest["spec"]["containers"][0]["resources"] = {"claims": [{"name": "devs"}]}
        core.create_namespaced_pod(ns, manifest)
    for name, gpu in (("by-switch", 5), ("by-root", 6)):
        h.running(core, ns, name, timeout=240)
        results = {r["request"]: r for r in dra.claim_of(ns, name)["status"]["allocation"]["devices"]["results"]}
        assert (results["gpu"]["driver"], results["gpu"]["device"]) == (GPU_DRIVER, f"gpu-{gpu}")
        nic = dra.topology_nic(results["nic"]["device"])
        assert nic.pcie_switch == gpus.topology.gpus[gpu].pcie_switch  # the NIC next to the GPU
        # the container sees exactly the GPU's and the NIC's character devices, from two drivers' CDI specs
        assert char_devices(rn, ns, name) == {f"uverbs{gpu}": (231, 192 + gpu), "rdma_cm": (10, 58)}
        seen = char_devices(rn, ns, name, "/dev")
        assert {k: v for k, v in seen.items() if k.startswith("nvidia")} == {
            f"nvidia{gpu}": (NVIDIA_MAJOR, gpu), "nvidiactl": (NVIDIA_MAJOR, NVIDIACTL_MINOR)}
        assert gpus.spec_path(dra.claim_of(ns, name)["metadata"]["uid"]).exists()
    for name in ("by-switch", "by-root"):
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    for name in ("by-switch", "by-root"):
        h.gone(core, ns, name)
    kubeutil.wait_for(lambda: not list(rn.layout.cdi_dir.glob("*.json")) and dra.records() == [], 60,
                      "both drivers unprepared")
