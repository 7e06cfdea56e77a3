"""scheduler/dra: slices and claims parsed, selectors (cel-python), demand for the core, and the core's
GPUs / NICs mapped back to DRA devices, with shares and matchAttribute (pure; fixture slices)."""

from __future__ import annotations

from typing import Any

import pytest

from railnet.dev import fixture_gpu
from railnet.dev.kwok_topology import topology_object
from scheduler.dra.api import parse_claim, parse_slice
from scheduler.dra.ledger import Ledger
from scheduler.dra.match import GPU, NIC, SHARE, Matcher, Unsatisfiable, node_devices

CLASSES = {fixture_gpu.DRIVER: (f'device.driver == "{fixture_gpu.DRIVER}"',),
           "rdma.railnet.io": ('device.driver == "rdma.railnet.io"',)}
BW = "rdma.railnet.io/bandwidth"


def node(name: str = "n1") -> Any:
    topo = fixture_gpu.topology(name)
    devices = parse_slice(fixture_gpu.gpu_slice(name, topo)) + parse_slice(fixture_gpu.nic_slice(name, topo))
    return node_devices(name, devices, topology_object(name)["spec"])


def claim(requests: list[dict[str, Any]], constraints: list[dict[str, Any]] | None = None, uid: str = "u1") -> Any:
    return parse_claim({"metadata": {"namespace": "ns", "name": f"c-{uid}", "uid": uid, "resourceVersion": "1"},
                        "spec": {"devices": {"requests": requests, "constraints": constraints or []}}})


def req(name: str, cls: str, cel: str | None = None, count: int = 1, bw: str | None = None) -> dict[str, Any]:
    exact: dict[str, Any] = {"deviceClassName": cls, "count": count}
    if cel:
        exact["selectors"] = [{"cel": {"expression": cel}}]
    if bw:
        exact["capacity"] = {"requests": {BW: bw}}
    return {"name": name, "exactly": exact}


GPU_REQ = req("gpu", fixture_gpu.DRIVER)
NIC_REQ = req("nic", "rdma.railnet.io")


def test_devices_are_placed_on_the_topology_by_bus_id() -> None:
    nd = node()
    place = dict(zip([d.name for d in nd.devices], nd.place, strict=True))
    assert place["gpu-0"] == (GPU, 0) and place["gpu-7"] == (GPU, 7)
    assert place["nic-0000-19-00-0"] == (NIC, 0) and place["nic-0000-de-00-0"] == (NIC, 7)
    assert node("n2").shape == nd.shape  # identical fixture nodes share one shape (one CEL pass)
    nic = next(d for d in nd.devices if d.name == "nic-0000-19-00-0")
    assert nic.shareable and nic.capacity[BW] == 400 * 10**9


def test_demand_asks_the_core_for_gpus_and_whole_nics() -> None:
    m = Matcher()
    d = m.demand([claim([GPU_REQ, NIC_REQ, req("half", "rdma.railnet.io", bw="200G")])], CLASSES, [node()])
    assert (d.gpus, d.nics) == (1, 1)
    assert [n.kind for n in d.needs] == [GPU, NIC, SHARE]


@pytest.mark.parametrize(("request_", "says"), [
    (req("x", "nobody"), "DeviceClass 'nobody' does not exist"),
    (req("x", "rdma.railnet.io", cel='device.attributes["rdma.railnet.io"].nope == 1'), "nope"),
    (req("x", "rdma.railnet.io", bw="800G"), "asks for 800000000000 of rdma.railnet.io/bandwidth but the largest"),
    ({"name": "x", "firstAvailable": [{"name": "a", "deviceClassName": "rdma.railnet.io"}]}, "firstAvailable"),
    (req("x", "rdma.railnet.io", cel="device.attributes["), "does not compile"),
])
def test_unsatisfiable_claims_say_why(request_: dict[str, Any], says: str) -> None:
    with pytest.raises(Unsatisfiable, match=None) as err:
        Matcher().demand([claim([request_])], CLASSES, [node()])
    assert says in str(err.value)


def test_assign_maps_the_core_choice_and_checks_match_attribute() -> None:
    m, nd = Matcher(), node()
    c = claim([GPU_REQ, NIC_REQ], [{"requests": ["gpu", "nic"], "matchAttribute": "rdma.railnet.io/pcieSwitch"}])
    d = m.demand([c], CLASSES, [nd])
    out = m.assign(d, CLASSES, nd, (3,), (3,), ((3, 3),), Ledger(), [])
    got = {r.request: r for r in out["u1"]}
    assert got["gpu"].device == "gpu-3" and got["nic"].device == "nic-0000-5d-00-0"
    assert got["nic"].share_id and got["nic"].consumed == {BW: 400 * 10**9}  # shareable NIC taken whole
    with pytest.raises(Unsatisfiable, match="matchAttribute rdma.railnet.io/pcieSwitch"):
        m.assign(d, CLASSES, nd, (3,), (2,), ((3, 2),), Ledger(), [])


def test_shares_fill_the_nic_nearest_the_gpu_then_stop() -> None:
    m, nd = Matcher(), node()
    ledger = Ledger()
    one = claim([GPU_REQ, req("bw", "rdma.railnet.io", bw="200G")], uid="a")
    d = m.demand([one], CLASSES, [nd])
    first = m.assign(d, CLASSES, nd, (5,), (), (), ledger, [])["a"]
    assert first[1].device == "nic-0000-bc-00-0"  # GPU 5's switch NIC
    ledger.set("a", first[1:])  # the share only: the test reuses GPU 5
    second = m.assign(d, CLASSES, nd, (5,), (), (), ledger, [])["a"]
    assert second[1].device == "nic-0000-bc-00-0" and second[1].share_id != first[1].share_id
    ledger.set("b", second[1:])
    third = m.assign(d, CLASSES, nd, (5,), (), (), ledger, [])["a"]
    assert third[1].device != "nic-0000-bc-00-0"  # full: the next nearest NIC
    nic5 = next(x for x in nd.devices if x.name == "nic-0000-bc-00-0")
    assert ledger.remaining(nic5) == {BW: 0}
    ledger.set("a", None)
    assert ledger.remaining(nic5) == {BW: 200 * 10**9}


def test_a_device_another_claim_holds_is_never_handed_out_again() -> None:
    m, nd = Matcher(), node()
    d = m.demand([claim([GPU_REQ])], CLASSES, [nd])
    ledger = Ledger()
    ledger.set("other", m.assign(d, CLASSES, nd, (3,), (), (), Ledger(), [])["u1"])
    with pytest.raises(Unsatisfiable, match="gpu-3 on n1 is held by another claim"):
        m.assign(d, CLASSES, nd, (3,), (), (), ledger, [])
