"""The node's ResourceSlice built from fixture servers' topology (netmanager.dra.slices) and its sync."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from netmanager.dra import DRIVER, slices
from netmanager.dra.driver import socket_paths, sync_slice
from netmanager.topology.discover import discover
from railnet.dev.fixtures import build_fixture

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
C_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def topo(tmp_path: Path, fixture: str) -> Any:
    built = build_fixture(fixture, tmp_path)
    return built, discover(str(tmp_path), node_name="node-a")


def test_hgx_h100_slice_has_standard_and_railnet_attributes(tmp_path: Path) -> None:
    built, t = topo(tmp_path, "hgx-h100")
    devs = slices.devices(t)
    assert [d["name"] for d in devs] == [slices.device_name(n.pci_address) for n in t.nics]
    assert devs[0]["name"] == "nic-0000-19-00-0"
    first = devs[0]["attributes"]
    assert first["resource.kubernetes.io/pcieRoot"] == {"string": "pci0000:15"}
    assert first["resource.kubernetes.io/pciBusID"] == {"string": "0000:19:00.0"}
    assert first["resource.kubernetes.io/numaNode"] == {"int": 0}
    assert first[f"{DRIVER}/pcieSwitch"] == {"string": "0000:16:00.0"}
    assert first[f"{DRIVER}/rdmaDevice"] == {"string": "mlx5_0"}
    assert first[f"{DRIVER}/linkLayer"] == {"string": "Ethernet"}
    assert first[f"{DRIVER}/speedMbps"] == {"int": 400000}
    assert first[f"{DRIVER}/isVF"] == {"bool": False}
    assert first[f"{DRIVER}/sriovTotalVFs"] == {"int": 8}
    assert devs[0]["allowMultipleAllocations"] is True
    assert devs[0]["capacity"] == {f"{DRIVER}/bandwidth": {"value": "400000M", "requestPolicy": {"default": "400000M"}}}
    assert [d["attributes"][f"{DRIVER}/rail"]["int"] for d in devs] == list(range(8))
    assert {d["attributes"]["resource.kubernetes.io/numaNode"]["int"] for d in devs[4:]} == {1}


def test_every_name_and_value_fits_the_api_limits(tmp_path: Path) -> None:
    for fixture in ("hgx-h100", "hgx-a100", "pcie-4gpu", "sriov"):
        _, t = topo(tmp_path / fixture, fixture)
        for dev in slices.devices(t):
            assert DNS_LABEL.match(dev["name"]) and len(dev["name"]) <= 63
            assert len(dev["attributes"]) + len(dev.get("capacity", {})) <= 32
            for key, value in dev["attributes"].items():
                domain, _, ident = key.rpartition("/")
                assert domain in (DRIVER, "resource.kubernetes.io") and C_IDENT.match(ident) and len(ident) <= 32
                (kind, v), = value.items()
                assert kind in ("int", "bool", "string", "version")
                assert kind != "string" or len(v) <= 64


def test_sriov_vfs_are_devices_with_their_pf_and_rail(tmp_path: Path) -> None:
    _, t = topo(tmp_path, "sriov")
    devs = {d["name"]: d["attributes"] for d in slices.devices(t)}
    vfs = [a for a in devs.values() if a[f"{DRIVER}/isVF"] == {"bool": True}]
    pfs = [a for a in devs.values() if a[f"{DRIVER}/isVF"] == {"bool": False}]
    assert len(pfs) == 2 and len(vfs) == 8
    assert all(f"{DRIVER}/sriovTotalVFs" not in a for a in vfs)
    for vf in vfs:
        pf = devs[slices.device_name(vf[f"{DRIVER}/pfPciAddress"]["string"])]
        assert vf[f"{DRIVER}/rail"] == pf[f"{DRIVER}/rail"]
    # the VF moved into a pod has no netdev on the host: no netdev attribute, still a device
    assert sum(f"{DRIVER}/netdev" not in a for a in vfs) == 1


def test_unknown_numa_node_is_left_out(tmp_path: Path) -> None:
    _, t = topo(tmp_path, "hgx-h100")
    nic = t.nics[0].model_copy(update={"numa_node": -1})
    t = t.model_copy(update={"nics": [nic]})
    assert "resource.kubernetes.io/numaNode" not in slices.devices(t)[0]["attributes"]


def test_nic_without_rdma_device_is_not_published(tmp_path: Path) -> None:
    _, t = topo(tmp_path, "hgx-h100")
    t = t.model_copy(update={"nics": [t.nics[0].model_copy(update={"rdma_device": None}), *t.nics[1:]]})
    names = [d["name"] for d in slices.devices(t)]
    assert "nic-0000-19-00-0" not in names and len(names) == 7
    # the others keep their rails: a driver not loaded on one NIC does not renumber the node
    assert [d["attributes"][f"{DRIVER}/rail"]["int"] for d in slices.devices(t)] == list(range(1, 8))


def test_nic_of_unknown_speed_is_allocated_whole(tmp_path: Path) -> None:
    _, t = topo(tmp_path, "hgx-h100")
    t = t.model_copy(update={"nics": [t.nics[0].model_copy(update={"speed_mbps": None})]})
    (dev,) = slices.devices(t)
    assert "capacity" not in dev and "allowMultipleAllocations" not in dev
    assert f"{DRIVER}/speedMbps" not in dev["attributes"]


def test_slice_object_is_one_pool_per_node(tmp_path: Path) -> None:
    _, t = topo(tmp_path, "hgx-h100")
    obj = slices.slice_object("node-a", slices.devices(t), 3, node_uid="u-1")
    assert obj["apiVersion"] == "resource.k8s.io/v1"
    assert obj["spec"]["pool"] == {"name": "node-a", "generation": 3, "resourceSliceCount": 1}
    assert obj["spec"]["driver"] == DRIVER and obj["spec"]["nodeName"] == "node-a"
    assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"


class FakeApi:
    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.writes = 0

    def get_slice(self, name: str) -> dict[str, Any] | None:
        return self.obj

    def create_slice(self, body: dict[str, Any]) -> None:
        self.obj = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        self.writes += 1

    def replace_slice(self, body: dict[str, Any]) -> None:
        assert body["metadata"]["resourceVersion"] == self.obj["metadata"]["resourceVersion"]  # type: ignore[index]
        self.obj = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.writes + 1)}}
        self.writes += 1


def test_sync_creates_keeps_and_updates_with_a_new_generation(tmp_path: Path) -> None:
    _, t = topo(tmp_path, "hgx-h100")
    api = FakeApi()
    assert sync_slice(api, "node-a", t, None) == "created"
    # the server canonicalises quantities: the hash annotation, not the spelling, decides
    assert api.obj is not None
    api.obj["spec"]["devices"][0]["capacity"][f"{DRIVER}/bandwidth"] = {"value": "400G",
                                                                          "requestPolicy": {"default": "400G"}}
    assert sync_slice(api, "node-a", t, None) == "unchanged"
    assert api.writes == 1
    down = t.model_copy(update={"nics": t.nics[1:]})  # a NIC gone (driver unbound)
    assert sync_slice(api, "node-a", down, None) == "updated"
    assert api.obj["spec"]["pool"]["generation"] == 2 and len(api.obj["spec"]["devices"]) == 7
    api.obj = None  # the kubelet wiped it
    assert sync_slice(api, "node-a", down, None) == "created"


def test_socket_paths_standard_or_hashed_when_too_long(tmp_path: Path) -> None:
    reg, ep = socket_paths(Path("/var/lib/kubelet"))
    assert reg == Path("/var/lib/kubelet/plugins_registry/rdma.railnet.io-reg.sock")
    assert ep == Path("/var/lib/kubelet/plugins/rdma.railnet.io/dra.sock")
    deep = Path("/" + "d" * 70)
    reg, ep = socket_paths(deep)
    assert len(str(reg)) <= 107 and len(str(ep)) <= 107 and reg.parent.name == "plugins_registry"
    with pytest.raises(ValueError, match="too deep"):
        socket_paths(Path("/" + "d" * 100))
