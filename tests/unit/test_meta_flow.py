"""The meta plugin's flow with a fake cluster and recording delegates (no kernel): order, parallel
secondaries, rollback of everything on a failure, DEL from the record, network-status."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from cni.attachments import AttachmentStore
from cni.dispatch import InProcess
from cni.meta.plugin import MetaPlugin, Pod
from cni.spec import errors
from cni.spec.errors import CniError
from cni.spec.request import CniRequest
from ipam.sqlite import Database


class FakeCluster:
    def __init__(self, pod: Pod | None, nads: dict[str, dict[str, Any]]) -> None:
        self._pod = pod
        self.nads = nads
        self.status: dict[str, str] = {}
        self.fresh_pod: Pod | None = None  # what a read past the cache returns, when set
        self.fresh_reads = 0

    def pod(self, namespace: str, name: str, uid: str = "", fresh: bool = False) -> Pod | None:
        if fresh:
            self.fresh_reads += 1
            return self.fresh_pod or self._pod
        return self._pod

    def nad(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.nads.get(f"{namespace}/{name}")

    def set_network_status(self, pod: Pod, value: str) -> None:
        self.status[f"{pod.namespace}/{pod.name}"] = value


class Recorder:
    """A PluginExec that records calls and fails for the plugin types listed in `failing`."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.failing = failing
        self.lock = threading.Lock()

    def __call__(self, plugin_type: str, command: str, config: dict[str, Any],
                 env: dict[str, str]) -> dict[str, Any] | None:
        ifname = env["CNI_IFNAME"]
        with self.lock:
            self.calls.append((plugin_type, command, ifname))
        if command == "ADD" and plugin_type in self.failing:
            raise CniError(errors.DELEGATE_FAILED, f"{plugin_type} broke")
        if command != "ADD":
            return None
        n = sum(1 for c in self.calls if c[1] == "ADD")
        return {"cniVersion": config["cniVersion"], "interfaces": [{"name": ifname, "mac": f"02:00:00:00:00:{n:02x}"}],
                "ips": [{"address": f"10.0.{n}.2/24", "gateway": f"10.0.{n}.1", "interface": 0}], "dns": {},
                "seen": config.get("runtimeConfig", {})}


def nad(plugin_type: str, **extra: Any) -> dict[str, Any]:
    return {"config": json.dumps({"cniVersion": "1.0.0", "type": plugin_type, **extra})}


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "net.d"
    d.mkdir()
    (d / "10-calico.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "calico"}, {"type": "portmap"}]}))
    return d


def meta_conf(conf_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "railnet", "type": "railnet", "clusterNetwork": "k8s-pod-network",
            "confDir": str(conf_dir), **extra}


def request(command: str, conf: dict[str, Any], uid: str = "u1") -> CniRequest:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": f"K8S_POD_NAMESPACE=ml;K8S_POD_NAME=trainer-0;K8S_POD_UID={uid}"}
    return CniRequest.parse(env, json.dumps(conf))


def plugin(tmp_path: Path, cluster: FakeCluster | None, run: Recorder) -> tuple[MetaPlugin, AttachmentStore]:
    store = AttachmentStore(Database(tmp_path / "state.db"))
    return MetaPlugin(store, cluster, run), store


ANNOTATED = Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "rail0, rail1@rdma1, other/rail2"})
NADS = {"ml/rail0": nad("railnet-macvlan"), "ml/rail1": nad("railnet-macvlan"), "other/rail2": nad("bad-plugin")}


def test_primary_first_then_every_secondary_and_status(tmp_path: Path, conf_dir: Path) -> None:
    cluster = FakeCluster(ANNOTATED, {**NADS, "other/rail2": nad("railnet-macvlan")})
    run = Recorder()
    meta, store = plugin(tmp_path, cluster, run)
    result = meta.add(request("ADD", meta_conf(conf_dir)))
    adds = [c for c in run.calls if c[1] == "ADD"]
    assert [c for c in adds if c[2] == "eth0"] == [("calico", "ADD", "eth0"), ("portmap", "ADD", "eth0")]
    assert sorted(c for c in adds if c[2] != "eth0") == [("railnet-macvlan", "ADD", "net1"),
                                                         ("railnet-macvlan", "ADD", "net3"),
                                                         ("railnet-macvlan", "ADD", "rdma1")]
    assert [i["name"] for i in result["interfaces"]] == ["eth0"]  # the runtime gets the primary's result
    status = json.loads(cluster.status["ml/trainer-0"])
    assert [(s["name"], s["interface"], s["default"]) for s in status] == [
        ("k8s-pod-network", "eth0", True), ("ml/rail0", "net1", False), ("ml/rail1", "rdma1", False),
        ("other/rail2", "net3", False)]
    assert all(s["ips"] and s["mac"] for s in status)
    record = store.get("c1", "eth0")
    assert record is not None and record.state == "added"

    run.calls.clear()
    meta.delete(request("DEL", meta_conf(conf_dir)))
    dels = [c for c in run.calls if c[1] == "DEL"]
    assert [c for c in dels if c[2] == "eth0"] == [("portmap", "DEL", "eth0"), ("calico", "DEL", "eth0")]
    assert {c[2] for c in dels if c[2] != "eth0"} == {"net1", "rdma1", "net3"}
    assert store.get("c1", "eth0") is None


def test_a_failing_third_network_removes_everything(tmp_path: Path, conf_dir: Path) -> None:
    cluster = FakeCluster(ANNOTATED, NADS)
    run = Recorder(failing=("bad-plugin",))
    meta, store = plugin(tmp_path, cluster, run)
    with pytest.raises(CniError) as exc:
        meta.add(request("ADD", meta_conf(conf_dir)))
    assert "other/rail2" in exc.value.msg and "bad-plugin broke" in exc.value.msg
    added = {(c[0], c[2]) for c in run.calls if c[1] == "ADD"}
    deleted = {(c[0], c[2]) for c in run.calls if c[1] == "DEL"}
    assert added <= deleted  # every delegate that was added was deleted again, the primary included
    assert ("calico", "eth0") in deleted
    assert store.get("c1", "eth0") is None and cluster.status == {}


def test_del_needs_neither_pod_nor_api(tmp_path: Path, conf_dir: Path) -> None:
    cluster = FakeCluster(ANNOTATED, {**NADS, "other/rail2": nad("railnet-macvlan")})
    run = Recorder()
    meta, store = plugin(tmp_path, cluster, run)
    meta.add(request("ADD", meta_conf(conf_dir)))
    gone, _ = plugin(tmp_path, None, run)  # an agent restarted without cluster access
    run.calls.clear()
    gone.delete(request("DEL", meta_conf(conf_dir)))
    assert len([c for c in run.calls if c[1] == "DEL"]) == 5 and store.get("c1", "eth0") is None
    gone.delete(request("DEL", meta_conf(conf_dir)))  # a second DEL is fine


def test_capabilities_go_only_to_plugins_that_declare_them(tmp_path: Path, conf_dir: Path) -> None:
    pod = Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": json.dumps(
        [{"name": "rail0", "ips": ["10.9.0.5/24"], "mac": "02:00:00:00:00:09"}])})
    chain = {"cniVersion": "1.0.0", "name": "rail0", "plugins": [
        {"type": "railnet-macvlan", "capabilities": {"ips": True, "mac": True}}, {"type": "tuning"}]}
    cluster = FakeCluster(pod, {"ml/rail0": {"config": json.dumps(chain)}})
    seen: list[tuple[str, dict[str, Any]]] = []

    def run(plugin_type: str, command: str, config: dict[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
        seen.append((plugin_type, config.get("runtimeConfig", {})))
        return {"cniVersion": config["cniVersion"], "interfaces": [{"name": env["CNI_IFNAME"]}], "ips": []}

    meta, _ = plugin(tmp_path, cluster, run)  # type: ignore[arg-type]
    meta.add(request("ADD", meta_conf(conf_dir)))
    assert ("railnet-macvlan", {"ips": ["10.9.0.5/24"], "mac": "02:00:00:00:00:09"}) in seen
    assert ("tuning", {}) in seen


@pytest.mark.parametrize(("pod", "nads", "extra", "code", "words"), [
    (ANNOTATED, NADS, {}, errors.UNKNOWN_CONTAINER, "re-created"),  # the request carries another UID
    (Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "missing"}), {}, {}, errors.INVALID_CONFIG,
     "ml/missing not found"),
    (Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "loop"}), {"ml/loop": nad("railnet")}, {},
     errors.INVALID_CONFIG, "itself 'railnet'"),
    (Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "rail0@eth0"}), NADS, {}, errors.INVALID_CONFIG,
     "used twice"),
    (Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "other/rail2"}), NADS,
     {"namespaceIsolation": True}, errors.INVALID_CONFIG, "another namespace"),
    (ANNOTATED, NADS, {"readinessIndicatorFile": "/nonexistent/ready"}, errors.TRY_AGAIN_LATER, "not ready"),
    (ANNOTATED, NADS, {"clusterNetwork": "nope"}, errors.INVALID_CONFIG, "no config found"),
])
def test_bad_input_is_a_clear_error_and_leaves_nothing(tmp_path: Path, conf_dir: Path, pod: Pod,
                                                      nads: dict[str, Any], extra: dict[str, Any], code: int,
                                                      words: str) -> None:
    cluster = FakeCluster(pod, nads)
    recorder = Recorder()
    store = AttachmentStore(Database(tmp_path / "state.db"))
    meta = MetaPlugin(store, cluster, InProcess({}, recorder))
    uid = "u2" if words == "re-created" else "u1"
    with pytest.raises(CniError) as exc:
        meta.add(request("ADD", meta_conf(conf_dir, **extra), uid=uid))
    assert exc.value.code == code and words in f"{exc.value.msg} {exc.value.details}"
    assert store.get("c1", "eth0") is None and cluster.status == {}
    added = {(c[0], c[2]) for c in recorder.calls if c[1] == "ADD"}
    assert added <= {(c[0], c[2]) for c in recorder.calls if c[1] == "DEL"}


def test_a_pod_without_kubernetes_args_gets_the_primary_only(tmp_path: Path, conf_dir: Path) -> None:
    run = Recorder()
    meta, _ = plugin(tmp_path, None, run)
    req = request("ADD", meta_conf(conf_dir))
    req.args = {}
    meta.add(req)
    assert [c[0] for c in run.calls] == ["calico", "portmap"]



def test_rail_auto_attaches_one_interface_per_allocated_nic(tmp_path: Path, conf_dir: Path) -> None:
    from scheduler.live.allocation import GpuRef, NicRef, PodAllocation, Rail

    allocation = PodAllocation(node="n1", topology_known=True, gpus=[GpuRef(index=0), GpuRef(index=1)],
                               nics=[NicRef(index=2, name="ens2np0", pci_address="0000:2b:00.0"),
                                     NicRef(index=5, pci_address="0000:5b:00.0", rdma_device="mlx5_5")],
                               rails=[Rail(rail=0, gpu=0, nic=2, tier=1, tier_name="SAME_SWITCH"),
                                      Rail(rail=1, gpu=1, nic=5, tier=1, tier_name="SAME_SWITCH")])
    pod = Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "rails",
                                        "railnet.io/allocation": allocation.to_annotation()})
    rails_nad = nad("railnet-macvlan", rail="auto", master="ignored",
                    ipam={"type": "railnet-ipam", "pool": "rail-{rail}"})
    seen: list[tuple[str, dict[str, Any]]] = []

    def run(plugin_type: str, command: str, config: dict[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
        seen.append((env["CNI_IFNAME"], config))
        return {"cniVersion": config["cniVersion"], "interfaces": [{"name": env["CNI_IFNAME"]}], "ips": []}

    meta, _ = plugin(tmp_path, FakeCluster(pod, {"ml/rails": rails_nad}), run)  # type: ignore[arg-type]
    meta.add(request("ADD", meta_conf(conf_dir)))
    rails = {ifname: conf for ifname, conf in seen if conf["type"] == "railnet-macvlan"}
    assert set(rails) == {"rail0", "rail1"}
    assert rails["rail0"]["master"] == "ens2np0" and rails["rail0"]["ipam"]["pool"] == "rail-0"
    assert "master" not in rails["rail1"] and rails["rail1"]["pciAddress"] == "0000:5b:00.0"
    assert rails["rail1"]["ipam"]["pool"] == "rail-1" and "rail" not in rails["rail1"]


def test_rail_auto_without_an_allocation_names_the_annotation(tmp_path: Path, conf_dir: Path) -> None:
    pod = Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "rails"})
    cluster = FakeCluster(pod, {"ml/rails": nad("railnet-macvlan", rail="auto")})
    run = Recorder()
    meta, store = plugin(tmp_path, cluster, run)
    with pytest.raises(CniError) as exc:
        meta.add(request("ADD", meta_conf(conf_dir)))
    assert exc.value.code == errors.INVALID_CONFIG and "railnet.io/allocation" in exc.value.details
    assert run.calls == [] and store.get("c1", "eth0") is None


def test_rail_auto_reads_the_pod_again_when_the_cached_copy_has_no_allocation(tmp_path: Path,
                                                                              conf_dir: Path) -> None:
    """The cache may hold the pod from before the scheduler wrote its allocation."""
    from scheduler.live.allocation import GpuRef, NicRef, PodAllocation, Rail

    allocation = PodAllocation(node="n1", topology_known=True, gpus=[GpuRef(index=0)],
                               nics=[NicRef(index=2, name="ens2np0")],
                               rails=[Rail(rail=0, gpu=0, nic=2, tier=1, tier_name="SAME_SWITCH")])
    stale = Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "rails"})
    cluster = FakeCluster(stale, {"ml/rails": nad("railnet-macvlan", rail="auto")})
    cluster.fresh_pod = Pod("ml", "trainer-0", "u1", {**stale.annotations,
                                                      "railnet.io/allocation": allocation.to_annotation()})
    run = Recorder()
    meta, _ = plugin(tmp_path, cluster, run)
    meta.add(request("ADD", meta_conf(conf_dir)))
    assert cluster.fresh_reads == 1
    assert ("railnet-macvlan", "ADD", "rail0") in run.calls


def test_secondaries_are_added_and_deleted_in_parallel(tmp_path: Path, conf_dir: Path) -> None:
    """Each secondary waits for the other at a barrier: done one after the other, this would time out."""
    pod = Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "rail0, rail1"})
    nads = {"ml/rail0": nad("railnet-macvlan"), "ml/rail1": nad("railnet-macvlan")}
    barriers = {"ADD": threading.Barrier(2, timeout=5), "DEL": threading.Barrier(2, timeout=5)}
    inner = Recorder()

    def run(plugin_type: str, command: str, config: dict[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
        if plugin_type == "railnet-macvlan":
            barriers[command].wait()
        return inner(plugin_type, command, config, env)

    meta, store = plugin(tmp_path, FakeCluster(pod, nads), run)  # type: ignore[arg-type]
    meta.add(request("ADD", meta_conf(conf_dir)))
    meta.delete(request("DEL", meta_conf(conf_dir)))
    dels = [c for c in inner.calls if c[1] == "DEL"]
    primary = [c for c in dels if c[2] == "eth0"]
    assert primary == [("portmap", "DEL", "eth0"), ("calico", "DEL", "eth0")]  # its own chain, in reverse
    assert store.get("c1", "eth0") is None


def test_add_and_del_run_every_network_at_once_primary_included(tmp_path: Path, conf_dir: Path) -> None:
    """The primary and both secondaries wait for each other at one barrier, on ADD and on DEL."""
    pod = Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "rail0, rail1"})
    nads = {"ml/rail0": nad("railnet-macvlan"), "ml/rail1": nad("railnet-macvlan")}
    barriers = {"ADD": threading.Barrier(3, timeout=5), "DEL": threading.Barrier(3, timeout=5)}
    inner = Recorder()
    first_of_primary = {"ADD": "calico", "DEL": "portmap"}  # DEL runs the primary's chain in reverse

    def run(plugin_type: str, command: str, config: dict[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
        if plugin_type in ("railnet-macvlan", first_of_primary[command]):
            barriers[command].wait()
        return inner(plugin_type, command, config, env)

    meta, store = plugin(tmp_path, FakeCluster(pod, nads), run)  # type: ignore[arg-type]
    meta.add(request("ADD", meta_conf(conf_dir)))
    meta.delete(request("DEL", meta_conf(conf_dir)))
    assert store.get("c1", "eth0") is None
