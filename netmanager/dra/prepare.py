"""NodePrepareResources / NodeUnprepareResources for one claim: the state machine, apart from gRPC.

The kubelet names a claim (namespace, name, uid); its allocation is read from the API server. Per claim:

    (absent) --prepare--> preparing --CDI spec written--> prepared --unprepare--> (absent)

Each step is recorded in `<state dir>/claims/<uid>.json` (written atomically) *before* the side
effect it announces, so a crash at any point leaves a record that says what may exist:
- prepare of a `prepared` claim returns the recorded devices (and rewrites a CDI spec that went
  missing): idempotent, and an agent restarted between prepare and unprepare answers the same;
- prepare of a `preparing` claim (the agent died mid-way) starts over;
- unprepare removes the CDI spec, then the record; of an unknown claim it is a no-op (the kubelet
  retries and may call twice). It never needs the API server: the claim may be gone already.
A failed prepare removes what it wrote, so an error leaves nothing half-prepared.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from netmanager.dra import DRIVER, cdi
from netmanager.dra.slices import nic_by_device
from netmanager.topology.model import NodeTopology


class PrepareError(RuntimeError):
    """Why a claim cannot be prepared; the kubelet shows the message in the pod's events."""


class ClaimReader(Protocol):
    def claim(self, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclass
class PreparedDevice:
    request_names: list[str]
    pool_name: str
    device_name: str
    cdi_device_ids: list[str]
    share_id: str | None = None
    consumed_capacity: dict[str, str] = field(default_factory=dict)  # a bandwidth share, as allocated


@dataclass
class ClaimRecord:
    uid: str
    namespace: str
    name: str
    state: str  # "preparing" | "prepared"
    devices: list[PreparedDevice] = field(default_factory=list)
    cdi_spec: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, data: dict[str, Any]) -> ClaimRecord:
        devices = [PreparedDevice(**d) for d in data.pop("devices", [])]
        return cls(devices=devices, **data)


class ClaimStore:
    """One JSON file per claim under `dir` (0700)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, uid: str) -> Path:
        if not uid or "/" in uid or uid.startswith("."):
            raise PrepareError(f"invalid claim uid {uid!r}")
        return self.dir / f"{uid}.json"

    def get(self, uid: str) -> ClaimRecord | None:
        try:
            return ClaimRecord.load(json.loads(self._path(uid).read_text()))
        except FileNotFoundError:
            return None

    def put(self, record: ClaimRecord) -> None:
        path = self._path(record.uid)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(record), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def delete(self, uid: str) -> None:
        self._path(uid).unlink(missing_ok=True)

    def all(self) -> list[ClaimRecord]:
        return [r for p in sorted(self.dir.glob("*.json")) if (r := self.get(p.stem)) is not None]


class Preparer:
    """Prepare and unprepare claims of this node; calls are serialised (the kubelet may overlap them)."""

    def __init__(self, node_name: str, store: ClaimStore, cdi_dir: Path, sysfs: Path, dev_root: Path,
                 claims: ClaimReader, topology: Any) -> None:
        """`topology` is a callable returning the current NodeTopology (the publisher's last discovery)."""
        self.node_name = node_name
        self.store = store
        self.cdi_dir = cdi_dir
        self.sysfs = sysfs
        self.dev_root = dev_root
        self.claims = claims
        self.topology = topology
        self._lock = threading.Lock()

    def prepare(self, namespace: str, name: str, uid: str) -> list[PreparedDevice]:
        with self._lock:
            record = self.store.get(uid)
            if record is not None and record.state == "prepared":
                if not cdi.spec_path(self.cdi_dir, uid).exists():  # someone removed it: the record says what it was
                    cdi.write_spec(self.cdi_dir, uid, record.cdi_spec)
                return record.devices
            if record is not None:  # died while preparing: start over from a clean slate
                self._undo(uid)
            try:
                return self._prepare(namespace, name, uid)
            except Exception:
                self._undo(uid)
                raise

    def _prepare(self, namespace: str, name: str, uid: str) -> list[PreparedDevice]:
        where = f"ResourceClaim {namespace}/{name}"
        claim = self.claims.claim(namespace, name)
        if claim is None:
            raise PrepareError(f"{where} does not exist")
        if claim.get("metadata", {}).get("uid") != uid:
            raise PrepareError(f"{where} has uid {claim.get('metadata', {}).get('uid')}, the kubelet asked for {uid}: "
                               "the claim was replaced")
        allocation = (claim.get("status") or {}).get("allocation")
        if not allocation:
            raise PrepareError(f"{where} is not allocated")
        results = [r for r in allocation.get("devices", {}).get("results", []) if r.get("driver") == DRIVER]
        if not results:
            raise PrepareError(f"{where} has no device of driver {DRIVER}")
        topology: NodeTopology = self.topology()
        nics = nic_by_device(topology)
        chars: dict[str, list[cdi.CharDevice]] = {}
        devices: list[PreparedDevice] = []
        for result in results:
            pool, device = result.get("pool", ""), result.get("device", "")
            if pool != self.node_name:
                raise PrepareError(f"{where}: device {device} is from pool {pool!r}, this node serves pool "
                                   f"{self.node_name!r}")
            nic = nics.get(device)
            if nic is None:
                raise PrepareError(f"{where}: device {device} is not an RDMA NIC of node {self.node_name} "
                                   f"(it has {', '.join(sorted(nics)) or 'none'})")
            if device not in chars:
                try:
                    chars[device] = cdi.char_devices(nic, self.sysfs, self.dev_root)
                except cdi.CdiError as exc:
                    raise PrepareError(f"{where}: device {device}: {exc}") from None
            devices.append(PreparedDevice([result.get("request", "")], pool, device, [cdi.cdi_id(uid, device)],
                                          result.get("shareID"), dict(result.get("consumedCapacity") or {})))
        body = cdi.spec(uid, chars)
        record = ClaimRecord(uid, namespace, name, "preparing", devices, body)
        self.store.put(record)
        cdi.write_spec(self.cdi_dir, uid, body)
        record.state = "prepared"
        self.store.put(record)
        return devices

    def unprepare(self, uid: str) -> None:
        with self._lock:
            self._undo(uid)

    def _undo(self, uid: str) -> None:
        cdi.remove_spec(self.cdi_dir, uid)
        self.store.delete(uid)
