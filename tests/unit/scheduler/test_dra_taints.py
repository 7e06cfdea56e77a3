"""Device taints (the agent taints a NIC whose RDMA link is down): railnet's scheduler gives a tainted
device only to a request that tolerates every NoSchedule/NoExecute taint on it, as kube-scheduler does."""

from __future__ import annotations

from typing import Any

import pytest

from railnet.dev import fixture_gpu
from railnet.dev.kwok_topology import topology_object
from scheduler.dra.api import Device, parse_slice
from scheduler.dra.match import Matcher, node_devices
from tests.unit.scheduler.test_dra_match import CLASSES, claim

DOWN = {"key": "rdma.railnet.io/link-down", "value": "DOWN", "effect": "NoSchedule"}


def tainted_node(name: str = "n1", nic: str = "nic-0000-5d-00-0", taint: dict[str, str] | None = None) -> Any:
    topo = fixture_gpu.topology(name)
    nics = fixture_gpu.nic_slice(name, topo)
    for dev in nics["spec"]["devices"]:
        if dev["name"] == nic:
            dev["taints"] = [taint or DOWN]
    devices = parse_slice(fixture_gpu.gpu_slice(name, topo)) + parse_slice(nics)
    return node_devices(name, devices, topology_object(name)["spec"])


def nic_request(tolerations: list[dict[str, str]] | None = None) -> dict[str, Any]:
    exact: dict[str, Any] = {"deviceClassName": "rdma.railnet.io", "count": 1}
    if tolerations is not None:
        exact["tolerations"] = tolerations
    return {"name": "nic", "exactly": exact}


def eligible_names(nd: Any, request: dict[str, Any]) -> set[str]:
    req = claim([request]).requests[0]
    return {nd.devices[pos].name for pos in Matcher().eligible(req, CLASSES, nd)}


def test_a_tainted_nic_is_not_eligible_and_the_others_are() -> None:
    nd = tainted_node()
    names = eligible_names(nd, nic_request())
    assert "nic-0000-5d-00-0" not in names and len(names) == 7
    # the eligibility cache is per node shape: a tainted node must not share the untainted shape's entry
    untouched = tainted_node(nic="no-such-device")
    assert nd.shape != untouched.shape and "nic-0000-5d-00-0" in eligible_names(untouched, nic_request())


@pytest.mark.parametrize("toleration", [
    {"key": "rdma.railnet.io/link-down", "operator": "Exists"},
    {"key": "rdma.railnet.io/link-down", "value": "DOWN"},  # operator Equal by default
    {"key": "rdma.railnet.io/link-down", "value": "DOWN", "effect": "NoSchedule"},
    {"operator": "Exists"},  # every taint
])
def test_a_request_that_tolerates_the_taint_may_get_it(toleration: dict[str, str]) -> None:
    assert "nic-0000-5d-00-0" in eligible_names(tainted_node(), nic_request([toleration]))


@pytest.mark.parametrize("toleration", [
    {"key": "rdma.railnet.io/link-down", "value": "INIT"},  # another value
    {"key": "other", "operator": "Exists"},
    {"key": "rdma.railnet.io/link-down", "operator": "Exists", "effect": "NoExecute"},  # another effect
])
def test_a_toleration_for_something_else_does_not_help(toleration: dict[str, str]) -> None:
    assert "nic-0000-5d-00-0" not in eligible_names(tainted_node(), nic_request([toleration]))


def test_only_scheduling_effects_count() -> None:
    nd = tainted_node(taint={"key": "k", "value": "v", "effect": "None"})  # informational: not a taint we obey
    assert "nic-0000-5d-00-0" in eligible_names(nd, nic_request())
    assert all(not d.taints for d in nd.devices if isinstance(d, Device))
