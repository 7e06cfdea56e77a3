"""NICs whose link is down are tainted in the slice (netmanager.dra.link_state, slices.devices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from netmanager.dra import slices
from netmanager.dra.driver import sync_slice
from netmanager.dra.link_state import down_nics, port_state
from netmanager.topology.discover import discover
from railnet.dev.fixtures import build_fixture

TAINT = {"key": "rdma.railnet.io/link-down", "value": "DOWN", "effect": "NoSchedule"}


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    build_fixture("hgx-h100", tmp_path / "sys")
    return tmp_path / "sys"


def set_state(sysfs: Path, rdma: str, state: str) -> None:
    (sysfs / "class" / "infiniband" / rdma / "ports" / "1" / "state").write_text(state + "\n")


@pytest.mark.parametrize(("state", "expected"), [
    ("4: ACTIVE", ""), ("5: ACTIVE_DEFER", ""), ("1: DOWN", "DOWN"), ("2: INIT", "INIT"), ("3: ARMED", "ARMED")])
def test_port_states(sysfs: Path, state: str, expected: str) -> None:
    set_state(sysfs, "mlx5_3", state)
    assert port_state(sysfs, "mlx5_3") == expected


def test_an_unreadable_state_is_unknown_not_down(sysfs: Path) -> None:
    (sysfs / "class" / "infiniband" / "mlx5_3" / "ports" / "1" / "state").unlink()
    assert port_state(sysfs, "mlx5_3") is None
    assert port_state(sysfs, "mlx5_99") is None
    assert down_nics(sysfs, discover(str(sysfs), node_name="n")) == {}


def test_a_down_nic_is_tainted_no_schedule_and_the_slice_is_rewritten(sysfs: Path) -> None:
    topology = discover(str(sysfs), node_name="node-a")
    assert down_nics(sysfs, topology) == {}
    set_state(sysfs, "mlx5_3", "1: DOWN")
    down = down_nics(sysfs, topology)
    assert down == {"0000:5d:00.0": "DOWN"}
    devs = {d["name"]: d for d in slices.devices(topology, down)}
    assert devs["nic-0000-5d-00-0"]["taints"] == [TAINT]
    assert sum("taints" in d for d in devs.values()) == 1  # the others untouched, still allocatable

    class Api:
        def __init__(self) -> None:
            self.obj: dict[str, Any] | None = None

        def get_slice(self, name: str) -> dict[str, Any] | None:
            return self.obj

        def create_slice(self, body: dict[str, Any]) -> None:
            self.obj = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}

        def replace_slice(self, body: dict[str, Any]) -> None:
            self.obj = body

    api = Api()
    assert sync_slice(api, "node-a", topology, None) == "created"
    assert sync_slice(api, "node-a", topology, None, down) == "updated"  # the link went down
    assert api.obj is not None and api.obj["spec"]["pool"]["generation"] == 2
    assert sync_slice(api, "node-a", topology, None, down) == "unchanged"
    assert sync_slice(api, "node-a", topology, None, {}) == "updated"  # and came back


def test_taint_values_are_label_values(sysfs: Path) -> None:
    topology = discover(str(sysfs), node_name="n")
    (dev, *_) = slices.devices(topology, {"0000:19:00.0": "weird state!"})
    assert dev["taints"][0]["value"] == "weird_state"


def test_a_tainted_slice_holds_at_most_64_devices(sysfs: Path) -> None:
    topology = discover(str(sysfs), node_name="n")
    many = topology.model_copy(update={"nics": [topology.nics[0].model_copy(update={"pci_address": f"0000:{i:02x}:00.0"})
                                                for i in range(65)]})
    assert len(slices.devices(many)) == 65
    with pytest.raises(ValueError, match="at most 64"):
        slices.devices(many, {"0000:00:00.0": "DOWN"})
