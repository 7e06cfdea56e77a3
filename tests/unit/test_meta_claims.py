"""Networks on a DRA claim's NIC, the pure parts: the networks element, the claim -> NIC resolution of
netmanager.dra.attach (a fake API server, a real prepared-record store, fixture topologies), the
delegate config it produces, networkData, and the meta plugin's plan/ADD/DEL with a fake claim source."""

from __future__ import annotations

import json
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from cni.meta.claims import ClaimDevice, ClaimRef, claim_object_name, network_data, with_claim_device
from cni.meta.plugin import MetaPlugin, Pod, pod_claims
from cni.meta.selection import parse_selections
from cni.spec import errors
from cni.spec.errors import CniError
from netmanager.dra import DRIVER
from netmanager.dra.attach import ClaimAttachments, parse_quantity
from netmanager.dra.prepare import ClaimRecord, ClaimStore, PreparedDevice
from netmanager.dra.slices import BANDWIDTH, device_name
from netmanager.topology.discover import discover
from railnet.dev.fixtures import build_fixture
from tests.unit.test_meta_flow import FakeCluster, Recorder, conf_dir, meta_conf, nad, request  # noqa: F401

POD_UID = "pod-uid-1"


@pytest.mark.parametrize(("text", "value"), [
    ("200G", 200 * 10**9), ("400000M", 400 * 10**9), ("1.5Gi", Fraction(3, 2) * 2**30), ("25e9", 25 * 10**9),
    ("2500M", 2500 * 10**6), ("100", 100), ("500m", Fraction(1, 2)), ("1k", 1000)])
def test_quantities(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "G", "1g", "1.2.3", "10 G", "1Gb", "--1"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


class FakeApi:
    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.patches: list[dict[str, Any]] = []
        self.conflicts = 0

    def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.claims.get((namespace, name))
        return json.loads(json.dumps(obj)) if obj is not None else None

    def patch_claim_status(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        if self.conflicts:
            self.conflicts -= 1
            exc = RuntimeError("conflict")
            exc.status = 409  # type: ignore[attr-defined]
            raise exc
        obj = self.claims[(namespace, name)]
        assert body["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
        self.patches.append(body)
        obj["status"]["devices"] = body["status"]["devices"]
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)


class Node:
    """A node (fixture server) with its agent's prepared-record store and a fake API server."""

    def __init__(self, tmp: Path, fixture: str = "hgx-h100") -> None:
        build_fixture(fixture, tmp / "sys")
        self.topology = discover(str(tmp / "sys"), node_name="node-a")
        self.store = ClaimStore(tmp / "claims")
        self.api = FakeApi()
        self.source = ClaimAttachments("node-a", self.store, self.api, lambda: self.topology)

    def claim(self, name: str, results: list[dict[str, Any]], *, reserved: str = POD_UID, prepare: bool = True,
              state: str = "prepared") -> str:
        uid = str(uuid.uuid4())
        full = [{"request": "nic", "driver": DRIVER, "pool": "node-a", **r} for r in results]
        self.api.claims[("ml", name)] = {
            "metadata": {"name": name, "namespace": "ml", "uid": uid, "resourceVersion": "1"},
            "status": {"allocation": {"devices": {"results": full}},
                       "reservedFor": [{"resource": "pods", "name": "trainer-0", "uid": reserved}]}}
        if prepare:
            devices = [PreparedDevice([r["request"]], r["pool"], r["device"], [f"railnet.io/rdma={uid}-{r['device']}"],
                                      r.get("shareID"), dict(r.get("consumedCapacity") or {}))
                       for r in full if r["driver"] == DRIVER]
            self.store.put(ClaimRecord(uid, "ml", name, state, devices))
        return uid


RAIL2 = "nic-0000-4c-00-0"


def test_a_pf_claim_resolves_to_its_netdev(tmp_path: Path) -> None:
    node = Node(tmp_path)
    uid = node.claim("devs", [{"device": RAIL2}])
    dev = node.source.device("ml", "devs", POD_UID, "nic")
    assert (dev.claim_uid, dev.device, dev.pci_address, dev.netdev, dev.is_vf, dev.rdma_device) == (
        uid, RAIL2, "0000:4c:00.0", "enp76s0np0", False, "mlx5_2")
    assert dev.egress_bps is None  # the whole NIC: nothing to limit
    assert node.source.device("ml", "devs", POD_UID, None) == dev  # the claim's only NIC


def test_a_bandwidth_share_becomes_an_egress_rate(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.claim("half", [{"device": RAIL2, "shareID": "s-1", "consumedCapacity": {BANDWIDTH: "200G"}}])
    node.claim("all", [{"device": RAIL2, "shareID": "s-2", "consumedCapacity": {BANDWIDTH: "400G"}}])
    half = node.source.device("ml", "half", POD_UID, "nic")
    assert (half.egress_bps, half.share_id) == (200 * 10**9, "s-1")
    assert node.source.device("ml", "all", POD_UID, "nic").egress_bps is None


def test_a_vf_claim_resolves_to_its_pci_address(tmp_path: Path) -> None:
    node = Node(tmp_path, "sriov")
    vf = next(n for n in node.topology.nics if n.is_vf and n.rdma_device)
    node.claim("vf", [{"device": device_name(vf.pci_address)}])
    dev = node.source.device("ml", "vf", POD_UID, "nic")
    assert (dev.is_vf, dev.pci_address, dev.pf_pci_address) == (True, vf.pci_address, vf.pf_pci_address)


def test_subrequests_of_first_available_match_their_request(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.claim("devs", [{"device": RAIL2, "request": "nic/fast"}])
    assert node.source.device("ml", "devs", POD_UID, "nic").request == "nic/fast"


BAD_CLAIMS: list[tuple[str, dict[str, Any], str | None, int, str]] = [
    ("missing", {}, "nic", errors.INVALID_CONFIG, "does not exist"),
    ("other-pod", {"reserved": "someone-else"}, "nic", errors.INVALID_CONFIG, "not reserved for this pod"),
    ("no-request", {}, "gpu", errors.INVALID_CONFIG, "has no request 'gpu'"),
    ("gpu-only", {"results": [{"device": "gpu-0", "driver": "gpu.fixture.railnet.io", "request": "gpu"}]}, None,
     errors.INVALID_CONFIG, "holds no rdma.railnet.io device (its devices are of gpu.fixture.railnet.io)"),
    ("two", {"results": [{"device": RAIL2}, {"device": "nic-0000-5d-00-0"}]}, None, errors.INVALID_CONFIG,
     "holds 2 rdma.railnet.io devices"),
    ("elsewhere", {"results": [{"device": RAIL2, "pool": "node-b"}]}, "nic", errors.INVALID_CONFIG,
     "from pool 'node-b'"),
    ("unprepared", {"prepare": False}, "nic", errors.TRY_AGAIN_LATER, "is not prepared on node node-a"),
    ("half-prepared", {"state": "preparing"}, "nic", errors.TRY_AGAIN_LATER, "is not prepared"),
    ("ghost-nic", {"results": [{"device": "nic-0000-ee-00-0"}]}, "nic", errors.MASTER_NOT_FOUND,
     "no longer an RDMA NIC"),
]


@pytest.mark.parametrize(("name", "how", "request_name", "code", "text"), BAD_CLAIMS, ids=[c[0] for c in BAD_CLAIMS])
def test_bad_claims(tmp_path: Path, name: str, how: dict[str, Any], request_name: str | None, code: int,
                    text: str) -> None:
    node = Node(tmp_path)
    if name != "missing":
        node.claim(name, how.get("results", [{"device": RAIL2}]), reserved=how.get("reserved", POD_UID),
                   prepare=how.get("prepare", True), state=how.get("state", "prepared"))
    with pytest.raises(CniError) as exc:
        node.source.device("ml", name, POD_UID, request_name)
    assert exc.value.code == code and text in exc.value.msg, exc.value


def test_a_record_of_another_allocation_is_not_trusted(tmp_path: Path) -> None:
    node = Node(tmp_path)
    uid = node.claim("devs", [{"device": RAIL2}])
    node.store.put(ClaimRecord(uid, "ml", "devs", "prepared", [PreparedDevice(["nic"], "node-a", "nic-0000-5d-00-0",
                                                                              [])]))
    with pytest.raises(CniError) as exc:
        node.source.device("ml", "devs", POD_UID, "nic")
    assert exc.value.code == errors.TRY_AGAIN_LATER and "not in this node's prepared record" in exc.value.msg


def test_network_data_is_merged_into_status_devices_and_cleared(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.claim("devs", [{"device": RAIL2, "shareID": "s-1"}])
    other = {"driver": "gpu.fixture.railnet.io", "pool": "node-a", "device": "gpu-0", "conditions": []}
    node.api.claims[("ml", "devs")]["status"]["devices"] = [other]
    dev = node.source.device("ml", "devs", POD_UID, "nic")
    node.api.conflicts = 1  # someone else wrote in between: read again, write again
    data = {"interfaceName": "net1", "ips": ["10.1.0.5/24"], "hardwareAddress": "02:00:00:00:00:01"}
    node.source.set_network_data(dev, data)
    devices = node.api.claims[("ml", "devs")]["status"]["devices"]
    assert devices == [other, {"driver": DRIVER, "pool": "node-a", "device": RAIL2, "shareID": "s-1",
                               "networkData": data}]
    node.source.set_network_data(dev, data)  # idempotent: still one entry of ours
    assert len(node.api.claims[("ml", "devs")]["status"]["devices"]) == 2
    node.source.set_network_data(dev, None)
    assert node.api.claims[("ml", "devs")]["status"]["devices"] == [other]
    patches = len(node.api.patches)
    node.source.set_network_data(dev, None)  # nothing of ours left: no write
    del node.api.claims[("ml", "devs")]
    node.source.set_network_data(dev, None)  # the claim is gone: nothing to do
    assert len(node.api.patches) == patches


def device(**kw: Any) -> ClaimDevice:
    base = dict(claim_namespace="ml", claim_name="devs-x", claim_uid="u", request="nic", driver=DRIVER, pool="node-a",
                device=RAIL2, pci_address="0000:4c:00.0", netdev="enp76s0np0", is_vf=False, rdma_device="mlx5_2")
    return ClaimDevice(**{**base, **kw})  # type: ignore[arg-type]


def chain(plugin: dict[str, Any]) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "rail", "plugins": [plugin, {"type": "tuning"}]}


def test_the_claims_nic_replaces_any_parent_the_nad_or_pod_named() -> None:
    nad_plugin = {"type": "railnet-macvlan", "master": "eth9", "pciAddress": "0000:01:00.0", "ipam": {"type": "x"},
                  "runtimeConfig": {"deviceID": "0000:99:00.0", "mac": "02:00:00:00:00:09"}}
    out = with_claim_device(chain(nad_plugin), device(), "ml/rail")
    first = out["plugins"][0]
    assert first["master"] == "enp76s0np0" and "pciAddress" not in first and "deviceID" not in first
    assert first["runtimeConfig"] == {"mac": "02:00:00:00:00:09"} and out["plugins"][1] == {"type": "tuning"}
    vf = with_claim_device(chain({"type": "railnet-sriov", "deviceID": "0000:99:00.0"}),
                           device(is_vf=True, pci_address="0000:3b:00.2", netdev=None), "ml/rail")
    assert vf["plugins"][0]["deviceID"] == "0000:3b:00.2" and "master" not in vf["plugins"][0]


@pytest.mark.parametrize(("plugin_type", "dev", "text"), [
    ("railnet-macvlan", device(is_vf=True, pci_address="0000:3b:00.2"), "allocated VF 0000:3b:00.2"),
    ("railnet-sriov", device(), "attaches VFs only"),
    ("railnet-macvlan", device(netdev=None), "has no netdev in the host namespace"),
])
def test_a_nad_that_cannot_take_the_claims_nic(plugin_type: str, dev: ClaimDevice, text: str) -> None:
    with pytest.raises(CniError) as exc:
        with_claim_device(chain({"type": plugin_type}), dev, "ml/rail")
    assert exc.value.code == errors.INVALID_CONFIG and text in exc.value.msg


def test_pod_claim_names() -> None:
    obj = {"spec": {"resourceClaims": [{"name": "devs", "resourceClaimTemplateName": "t"},
                                       {"name": "shared", "resourceClaimName": "team-nic"},
                                       {"name": "late", "resourceClaimTemplateName": "t"}]},
           "status": {"resourceClaimStatuses": [{"name": "devs", "resourceClaimName": "trainer-0-devs-abcde"}]}}
    claims = pod_claims(obj)
    assert claims == {"devs": "trainer-0-devs-abcde", "shared": "team-nic", "late": None}
    assert claim_object_name(claims, "ml/p", ClaimRef(claim_name="shared")) == "team-nic"
    for name, text in (("nope", "has no resource claim 'nope'"), ("late", "has no ResourceClaim yet")):
        with pytest.raises(CniError) as exc:
            claim_object_name(claims, "ml/p", ClaimRef(claim_name=name))
        assert exc.value.code == errors.INVALID_CONFIG and text in exc.value.msg


def test_network_data_from_a_result() -> None:
    result = {"interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:00"}, {"name": "net1", "mac": "02:00:00:00:00:01"}],
              "ips": [{"address": "10.0.0.2/24", "interface": 0}, {"address": "10.1.0.5/24", "interface": 1},
                      {"address": "fd00::5/64", "interface": 1}]}
    assert network_data(result, "net1") == {"interfaceName": "net1", "ips": ["10.1.0.5/24", "fd00::5/64"],
                                            "hardwareAddress": "02:00:00:00:00:01"}
    assert network_data({"interfaces": [], "ips": []}, "net2") == {"interfaceName": "net2"}


@pytest.mark.parametrize(("element", "text"), [
    ({"name": "r", "resourceClaim": {"claimName": "Devs"}}, "not a DNS label"),
    ({"name": "r", "resourceClaim": {"requestName": "nic"}}, "claimName"),
    ({"name": "r", "resourceClaim": {"claimName": "devs", "extra": 1}}, "Extra inputs"),
    ({"name": "r", "deviceID": "0000:01:00.0", "resourceClaim": {"claimName": "devs"}}, "both name the device"),
])
def test_bad_resource_claim_elements(element: dict[str, Any], text: str) -> None:
    with pytest.raises(CniError) as exc:
        parse_selections(json.dumps([element]), "ml")
    assert exc.value.code == errors.INVALID_CONFIG and text in exc.value.details


class FakeClaimSource:
    def __init__(self, dev: ClaimDevice | CniError) -> None:
        self.dev = dev
        self.asked: list[tuple[str, str, str, str | None]] = []
        self.data: list[tuple[str, dict[str, Any] | None]] = []

    def device(self, namespace: str, claim: str, pod_uid: str, request: str | None) -> ClaimDevice:
        self.asked.append((namespace, claim, pod_uid, request))
        if isinstance(self.dev, CniError):
            raise self.dev
        return self.dev

    def set_network_data(self, dev: ClaimDevice, data: dict[str, Any] | None) -> None:
        self.data.append((dev.claim_name, data))


def claim_pod(element: dict[str, Any], claims: dict[str, str | None] | None = None) -> Pod:
    return Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": json.dumps([element])},
               {"devs": "trainer-0-devs-x"} if claims is None else claims)


def test_add_and_del_of_a_claim_network(tmp_path: Path, conf_dir: Path) -> None:  # noqa: F811
    from cni.attachments import AttachmentStore
    from ipam.sqlite import Database

    cluster = FakeCluster(claim_pod({"name": "rail", "resourceClaim": {"claimName": "devs", "requestName": "nic"}}),
                          {"ml/rail": nad("railnet-macvlan", master="eth9")})
    source = FakeClaimSource(device())
    seen: list[dict[str, Any]] = []

    class Capture(Recorder):
        def __call__(self, plugin_type: str, command: str, config: dict[str, Any],
                     env: dict[str, str]) -> dict[str, Any] | None:
            if command == "ADD" and env["CNI_IFNAME"] == "net1":
                seen.append(config)
            return super().__call__(plugin_type, command, config, env)

    run = Capture()
    meta = MetaPlugin(AttachmentStore(Database(tmp_path / "s.db")), cluster, run, claims=source)
    meta.add(request("ADD", meta_conf(conf_dir)))
    assert source.asked == [("ml", "trainer-0-devs-x", "u1", "nic")]
    assert seen[0]["master"] == "enp76s0np0"
    status = {s["interface"]: s for s in json.loads(cluster.status["ml/trainer-0"])}
    assert status["net1"]["device-info"]["pci"] == {"pci-address": "0000:4c:00.0", "rdma-device": "mlx5_2"}
    ((claim, data),) = source.data
    assert claim == "devs-x" and data is not None and data["interfaceName"] == "net1" and data["ips"]
    meta.delete(request("DEL", meta_conf(conf_dir)))  # from the record: the claim's data is cleared
    assert source.data[-1] == ("devs-x", None)


def test_a_claim_network_fails_before_anything_runs(tmp_path: Path, conf_dir: Path) -> None:  # noqa: F811
    from cni.attachments import AttachmentStore
    from ipam.sqlite import Database

    nads = {"ml/rail": nad("railnet-macvlan"), "ml/auto": nad("railnet-macvlan", rail="auto")}
    cases: list[tuple[Pod, FakeClaimSource | None, str]] = [
        (claim_pod({"name": "rail", "resourceClaim": {"claimName": "other"}}), FakeClaimSource(device()),
         "has no resource claim 'other'"),
        (claim_pod({"name": "rail", "resourceClaim": {"claimName": "devs"}}), None, "not this node's DRA driver"),
        (claim_pod({"name": "rail", "resourceClaim": {"claimName": "devs"}}),
         FakeClaimSource(CniError(errors.INVALID_CONFIG, "ResourceClaim ml/x is not reserved for this pod")),
         "not reserved for this pod"),
        (claim_pod({"name": "auto", "resourceClaim": {"claimName": "devs"}}), FakeClaimSource(device()),
         "is rail: auto and names a resource claim"),
    ]
    for pod, source, text in cases:
        run = Recorder()
        meta = MetaPlugin(AttachmentStore(Database(tmp_path / f"{uuid.uuid4().hex}.db")), FakeCluster(pod, nads), run,
                          claims=source)
        with pytest.raises(CniError) as exc:
            meta.add(request("ADD", meta_conf(conf_dir)))
        assert exc.value.code == errors.INVALID_CONFIG and text in exc.value.msg, exc.value
        assert run.calls == [], "nothing may run before the claim is resolved"


def test_a_stale_cached_pod_is_read_again_for_its_claim_name(tmp_path: Path, conf_dir: Path) -> None:  # noqa: F811
    from cni.attachments import AttachmentStore
    from ipam.sqlite import Database

    element = {"name": "rail", "resourceClaim": {"claimName": "devs"}}
    cluster = FakeCluster(claim_pod(element, {"devs": None}), {"ml/rail": nad("railnet-macvlan")})
    cluster.fresh_pod = claim_pod(element)
    source = FakeClaimSource(device())
    meta = MetaPlugin(AttachmentStore(Database(tmp_path / "s.db")), cluster, Recorder(), claims=source)
    meta.add(request("ADD", meta_conf(conf_dir)))
    assert cluster.fresh_reads == 1 and source.asked[0][1] == "trainer-0-devs-x"
