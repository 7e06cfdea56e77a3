"""Devices for networks (Multus's resourceName): the pod's kubelet-allocated devices go to the NADs bound
to their resource, one each; a device the pod names must be its own; device-info reaches network-status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni.attachments import AttachmentStore
from cni.meta.devices import RESOURCE_NAME_ANNOTATION
from cni.meta.nad import nad_view
from cni.meta.plugin import MetaPlugin, Pod
from cni.spec import errors
from cni.spec.errors import CniError
from ipam.sqlite import Database
from tests.unit.test_meta_flow import FakeCluster, Recorder, meta_conf, nad, request

VF = "example.com/rail-vf"


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "net.d"
    d.mkdir()
    (d / "10-pods.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "calico"}]}))
    return d


class Kubelet:
    def __init__(self, held: dict[str, list[str]]) -> None:
        self.held = held
        self.asked: list[tuple[str, str]] = []

    def devices(self, namespace: str, name: str) -> dict[str, list[str]]:
        self.asked.append((namespace, name))
        return self.held


class Configs(Recorder):
    """Also keeps each delegate's config, by interface."""

    def __init__(self) -> None:
        super().__init__()
        self.configs: dict[str, dict[str, Any]] = {}

    def __call__(self, plugin_type: str, command: str, config: dict[str, Any],
                 env: dict[str, str]) -> dict[str, Any] | None:
        if command == "ADD":
            self.configs[env["CNI_IFNAME"]] = config
        return super().__call__(plugin_type, command, config, env)


def bound(resource: str = VF) -> dict[str, Any]:
    return {**nad("railnet-sriov"), RESOURCE_NAME_ANNOTATION: resource}


def make(tmp_path: Path, networks: str, nads: dict[str, dict[str, Any]],
         kubelet: Kubelet | None) -> tuple[MetaPlugin, FakeCluster, Configs]:
    cluster = FakeCluster(Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": networks}), nads)
    run = Configs()
    return MetaPlugin(AttachmentStore(Database(tmp_path / "state.db")), cluster, run, kubelet), cluster, run


def test_each_bound_network_gets_its_own_device_and_device_info(tmp_path: Path, conf_dir: Path) -> None:
    kubelet = Kubelet({VF: ["0000:17:00.2", "0000:17:00.3"], "nvidia.com/gpu": ["GPU-1"]})
    meta, cluster, run = make(tmp_path, "vf-a, vf-b, plain", {"ml/vf-a": bound(), "ml/vf-b": bound(),
                                                              "ml/plain": nad("railnet-macvlan")}, kubelet)
    meta.add(request("ADD", meta_conf(conf_dir)))
    assert {run.configs["net1"].get("deviceID"), run.configs["net2"].get("deviceID")} == {"0000:17:00.2",
                                                                                         "0000:17:00.3"}
    assert "deviceID" not in run.configs["net3"]
    assert kubelet.asked == [("ml", "trainer-0")]  # asked once per ADD
    status = {s["interface"]: s for s in json.loads(cluster.status["ml/trainer-0"])}
    assert status["net1"]["device-info"] == {"type": "pci", "version": "1.1.0",
                                             "pci": {"pci-address": run.configs["net1"]["deviceID"]}}
    assert "device-info" not in status["net3"] and "device-info" not in status["eth0"]


@pytest.mark.parametrize(("held", "why"), [({}, "holds none"), ({VF: ["0000:17:00.2"]}, "they are taken")])
def test_too_few_devices_is_a_clear_error_before_any_delegate_runs(tmp_path: Path, conf_dir: Path,
                                                                   held: dict[str, list[str]], why: str) -> None:
    meta, cluster, run = make(tmp_path, "vf-a, vf-b", {"ml/vf-a": bound(), "ml/vf-b": bound()}, Kubelet(held))
    with pytest.raises(CniError) as exc:
        meta.add(request("ADD", meta_conf(conf_dir)))
    assert exc.value.code == errors.INVALID_CONFIG and VF in exc.value.msg and why in exc.value.msg
    assert run.calls == [] and cluster.status == {}


def test_a_pod_may_name_only_a_device_it_holds(tmp_path: Path, conf_dir: Path) -> None:
    kubelet = Kubelet({VF: ["0000:17:00.2"]})
    other = '[{"name": "vf-a", "deviceID": "0000:17:00.5"}]'  # another pod's VF
    meta, _, run = make(tmp_path, other, {"ml/vf-a": nad("railnet-sriov")}, kubelet)
    with pytest.raises(CniError) as exc:
        meta.add(request("ADD", meta_conf(conf_dir)))
    assert exc.value.code == errors.INVALID_CONFIG and "does not hold" in exc.value.msg
    assert run.calls == []
    own = '[{"name": "vf-a", "deviceID": "0000:17:00.2"}]'
    (tmp_path / "2").mkdir()
    meta, _, run = make(tmp_path / "2", own, {"ml/vf-a": nad("railnet-sriov", capabilities={"deviceID": True})},
                        kubelet)
    meta.add(request("ADD", meta_conf(conf_dir)))
    assert run.configs["net1"]["runtimeConfig"] == {"deviceID": "0000:17:00.2"}


def test_without_the_kubelet_a_bound_network_is_refused(tmp_path: Path, conf_dir: Path) -> None:
    meta, _, run = make(tmp_path, "vf-a", {"ml/vf-a": bound()}, None)
    with pytest.raises(CniError) as exc:
        meta.add(request("ADD", meta_conf(conf_dir)))
    assert exc.value.code == errors.INVALID_CONFIG and "--pod-resources-socket" in exc.value.details
    assert run.calls == []


def test_the_nad_view_keeps_the_resource_name_and_nothing_else_of_metadata() -> None:
    obj = {"metadata": {"name": "vf-a", "annotations": {RESOURCE_NAME_ANNOTATION: VF, "other": "x"}},
           "spec": {"config": "{}"}}
    assert nad_view(obj) == {"config": "{}", RESOURCE_NAME_ANNOTATION: VF}
    assert nad_view({"spec": {"config": "{}"}}) == {"config": "{}"}
