"""The prepare/unprepare state machine (netmanager.dra.prepare) on a fixture server with fixture
RDMA character devices (mknod in the test's dir), and the DRAPlugin gRPC service over a real socket."""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from netmanager.dra import DRIVER, cdi
from netmanager.dra.prepare import ClaimRecord, ClaimStore, PrepareError, Preparer
from netmanager.topology.discover import discover
from railnet.dev.fixtures import build_fixture

UVERBS_MAJOR, UVERBS_MINOR0 = 231, 192
MISC_MAJOR, RDMA_CM_MINOR = 10, 58


def rdma_dev_tree(sysfs: Path, dev_root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Give every RDMA NIC of a fixture sysfs its verbs device as the kernel lays it out
    (`<pci dev>/infiniband_verbs/uverbsN/{ibdev,dev}`) and make the matching character devices under
    `dev_root/infiniband/` (mknod; nothing behind them on this kernel). RDMA devices in `skip` get the
    sysfs entry but no node. Returns {rdma device: uverbsN}."""
    (dev_root / "infiniband").mkdir(parents=True, exist_ok=True)
    cm = dev_root / "infiniband" / "rdma_cm"
    if not cm.exists():
        os.mknod(cm, 0o666 | stat.S_IFCHR, os.makedev(MISC_MAJOR, RDMA_CM_MINOR))
    found = {}
    for index, ib in enumerate(sorted((sysfs / "class" / "infiniband").iterdir(), key=lambda p: (len(p.name), p.name))):
        name = f"uverbs{index}"
        verbs = ib.resolve().parent.parent / "infiniband_verbs" / name
        verbs.mkdir(parents=True, exist_ok=True)
        (verbs / "ibdev").write_text(ib.name + "\n")
        (verbs / "dev").write_text(f"{UVERBS_MAJOR}:{UVERBS_MINOR0 + index}\n")
        node = dev_root / "infiniband" / name
        if ib.name not in skip and not node.exists():
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(UVERBS_MAJOR, UVERBS_MINOR0 + index))
        found[ib.name] = name
    return found


class FakeClaims:
    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls = 0

    def add(self, name: str, devices: list[str], driver: str = DRIVER, pool: str = "node-a") -> str:
        uid = str(uuid.uuid4())
        results = [{"request": "nic", "driver": driver, "pool": pool, "device": d} for d in devices]
        self.claims[("ns", name)] = {"metadata": {"name": name, "namespace": "ns", "uid": uid},
                                     "status": {"allocation": {"devices": {"results": results}}}}
        return uid

    def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls += 1
        return self.claims.get((namespace, name))


class Env:
    def __init__(self, tmp: Path) -> None:
        self.sysfs, self.dev, self.cdi, self.state = tmp / "sys", tmp / "dev", tmp / "cdi", tmp / "state"
        build_fixture("hgx-h100", self.sysfs)
        self.uverbs = rdma_dev_tree(self.sysfs, self.dev, skip=("mlx5_7",))
        self.topology = discover(str(self.sysfs), node_name="node-a")
        self.claims = FakeClaims()
        self.store = ClaimStore(self.state / "claims")
        self.preparer = self.new_preparer()

    def new_preparer(self) -> Preparer:
        """A fresh one over the same dirs: what a restarted agent has."""
        return Preparer("node-a", ClaimStore(self.state / "claims"), self.cdi, self.sysfs, self.dev, self.claims,
                        lambda: self.topology)

    def specs(self) -> list[str]:
        return sorted(p.name for p in self.cdi.glob("*")) if self.cdi.exists() else []


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_prepare_writes_the_cdi_spec_with_the_nics_char_devices(env: Env) -> None:
    uid = env.claims.add("c", ["nic-0000-3b-00-0"])
    devices = env.preparer.prepare("ns", "c", uid)
    assert [(d.device_name, d.pool_name, d.request_names) for d in devices] == [("nic-0000-3b-00-0", "node-a", ["nic"])]
    assert devices[0].cdi_device_ids == [f"railnet.io/rdma={uid}-nic-0000-3b-00-0"]
    spec = json.loads(cdi.spec_path(env.cdi, uid).read_text())
    assert spec["kind"] == "railnet.io/rdma" and spec["cdiVersion"] == "0.6.0"
    (device,) = spec["devices"]
    assert device["name"] == f"{uid}-nic-0000-3b-00-0"
    nodes = {n["path"]: n for n in device["containerEdits"]["deviceNodes"]}
    assert set(nodes) == {"/dev/infiniband/uverbs1", "/dev/infiniband/rdma_cm"}
    assert nodes["/dev/infiniband/uverbs1"]["hostPath"] == str(env.dev / "infiniband" / "uverbs1")
    assert (nodes["/dev/infiniband/uverbs1"]["major"], nodes["/dev/infiniband/uverbs1"]["minor"]) == (231, 193)
    assert env.store.get(uid).state == "prepared"  # type: ignore[union-attr]


def test_prepare_is_idempotent_and_survives_a_restart(env: Env) -> None:
    uid = env.claims.add("c", ["nic-0000-19-00-0", "nic-0000-3b-00-0"])
    first = env.preparer.prepare("ns", "c", uid)
    calls = env.claims.calls
    again = env.preparer.prepare("ns", "c", uid)
    restarted = env.new_preparer()
    after_restart = restarted.prepare("ns", "c", uid)
    assert first == again == after_restart
    assert env.claims.calls == calls  # answered from disk, not the API
    cdi.spec_path(env.cdi, uid).unlink()  # someone removed the spec: the record rewrites it
    assert restarted.prepare("ns", "c", uid) == first and cdi.spec_path(env.cdi, uid).exists()
    del env.claims.claims[("ns", "c")]  # the claim is gone from the API: unprepare needs only the disk
    restarted.unprepare(uid)
    assert env.specs() == [] and env.store.all() == []
    restarted.unprepare(uid)  # twice is fine


def test_half_prepared_claim_from_a_crash_is_redone(env: Env) -> None:
    uid = env.claims.add("c", ["nic-0000-19-00-0"])
    env.store.put(ClaimRecord(uid, "ns", "c", "preparing"))
    (env.cdi).mkdir()
    cdi.spec_path(env.cdi, uid).write_text("{garbage")
    devices = env.new_preparer().prepare("ns", "c", uid)
    assert devices[0].device_name == "nic-0000-19-00-0"
    assert json.loads(cdi.spec_path(env.cdi, uid).read_text())["kind"] == "railnet.io/rdma"


@pytest.mark.parametrize(("setup", "message"), [
    (lambda c: (c.add("c", ["nic-0000-19-00-0"]), "missing"), "ResourceClaim ns/missing does not exist"),
    (lambda c: (c.add("c", ["nic-0000-99-00-0"]), "c"), "device nic-0000-99-00-0 is not an RDMA NIC of node node-a"),
    (lambda c: (c.add("c", ["nic-0000-19-00-0"], pool="node-b"), "c"), "from pool 'node-b'"),
    (lambda c: (c.add("c", ["gpu-0"], driver="gpu.example.com"), "c"), f"has no device of driver {DRIVER}"),
    # mlx5_7's uverbs node was never made: nothing half-prepared even though 0000:19 was fine
    (lambda c: (c.add("c", ["nic-0000-19-00-0", "nic-0000-de-00-0"]), "c"), "uverbs7 is missing"),
])
def test_bad_claims_are_clear_errors_and_leave_nothing(env: Env, setup: Any, message: str) -> None:
    uid, name = setup(env.claims)
    with pytest.raises(PrepareError, match=message):
        env.preparer.prepare("ns", name, uid)
    assert env.specs() == [] and env.store.all() == []


def test_bandwidth_shares_of_one_nic_are_separate_claims(env: Env) -> None:
    uids = []
    for name, share in (("a", "share-a"), ("b", "share-b")):
        uid = env.claims.add(name, ["nic-0000-19-00-0"])
        result = env.claims.claims[("ns", name)]["status"]["allocation"]["devices"]["results"][0]
        result.update(shareID=share, consumedCapacity={f"{DRIVER}/bandwidth": "200G"})
        (device,) = env.preparer.prepare("ns", name, uid)
        assert (device.share_id, device.consumed_capacity) == (share, {f"{DRIVER}/bandwidth": "200G"})
        uids.append(uid)
    assert env.specs() == sorted(cdi.spec_path(env.cdi, u).name for u in uids)
    assert env.new_preparer().prepare("ns", "a", uids[0])[0].share_id == "share-a"  # from disk
    env.preparer.unprepare(uids[0])
    assert env.specs() == [cdi.spec_path(env.cdi, uids[1]).name]


def test_uid_mismatch_and_unallocated_claims(env: Env) -> None:
    env.claims.add("c", ["nic-0000-19-00-0"])
    with pytest.raises(PrepareError, match="the claim was replaced"):
        env.preparer.prepare("ns", "c", "other-uid")
    uid = env.claims.add("d", [])
    env.claims.claims[("ns", "d")]["status"] = {}
    with pytest.raises(PrepareError, match="is not allocated"):
        env.preparer.prepare("ns", "d", uid)
    assert env.specs() == [] and env.store.all() == []


def test_write_failure_leaves_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = env.claims.add("c", ["nic-0000-19-00-0"])

    def full(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cdi, "write_spec", full)
    with pytest.raises(OSError, match="No space"):
        env.preparer.prepare("ns", "c", uid)
    assert env.specs() == [] and env.store.all() == []


@pytest.fixture
def grpc_driver(env: Env, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    import grpc

    from netmanager.dra.driver import _DraService
    from netmanager.kubelet.gen import dra_v1_pb2 as pb
    from netmanager.kubelet.gen import dra_v1_pb2_grpc as rpc

    sock = tmp_path / "dra.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rpc.add_DRAPluginServicer_to_server(_DraService(env.preparer), server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield rpc.DRAPluginStub(channel), pb
    finally:
        channel.close()
        server.stop(0).wait()


def test_grpc_prepare_and_unprepare_per_claim(env: Env, grpc_driver: tuple[Any, Any]) -> None:
    stub, pb = grpc_driver
    good = env.claims.add("good", ["nic-0000-4c-00-0"])
    bad = env.claims.add("bad", ["nic-0000-de-00-0"])
    reply = stub.NodePrepareResources(pb.NodePrepareResourcesRequest(claims=[
        pb.Claim(namespace="ns", name="good", uid=good), pb.Claim(namespace="ns", name="bad", uid=bad)]), timeout=10)
    assert reply.claims[good].error == ""
    (device,) = reply.claims[good].devices
    assert (device.pool_name, device.device_name, list(device.request_names)) == ("node-a", "nic-0000-4c-00-0", ["nic"])
    assert list(device.cdi_device_ids) == [f"railnet.io/rdma={good}-nic-0000-4c-00-0"]
    assert not device.HasField("share_id")
    assert "uverbs7 is missing" in reply.claims[bad].error and not reply.claims[bad].devices
    assert env.specs() == [cdi.spec_path(env.cdi, good).name]
    reply = stub.NodeUnprepareResources(pb.NodeUnprepareResourcesRequest(claims=[
        pb.Claim(namespace="ns", name="good", uid=good), pb.Claim(namespace="ns", name="bad", uid=bad)]), timeout=10)
    assert reply.claims[good].error == "" and reply.claims[bad].error == ""
    assert env.specs() == [] and env.store.all() == []
