"""DRA in the live scheduler: the ResourceSlice / ResourceClaim / DeviceClass caches, the device
ledger, and the claim status writes.

``DraState`` is fed by three reflectors (under the scheduler cache's lock) and answers what the loop
asks: a node's devices placed on its NodeTopology (``node``), one node per device shape
(``shapes``), which GPU / NIC indices claims hold on a node (``held``: the cache keeps them out of the
core's reach), and a pod's claims (``claims_of``).

``ClaimWriter`` writes what the loop decided, as kube-scheduler's DRA plugin does in PreBind: the
``resource.kubernetes.io/delete-protection`` finalizer first, then ``status.allocation`` (results,
the class and claim config, a nodeSelector on the node) and ``status.reservedFor`` (the pod) in one
status update. A unit's claims are written all or none: on the first failure the claims already
written are put back (allocation and reservation removed, the finalizer too when this write added
it), so a gang never holds half its devices. The controller manager deallocates claims whose pods
are gone.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import KeysView, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.dra.api import Claim, Device, DeviceKey, Result, class_selectors, parse_claim, parse_slice
from scheduler.dra.ledger import Ledger
from scheduler.dra.match import GPU, NIC, Matcher, NodeDevices, node_devices
from scheduler.live.kubeapi import KubeApi

JSON = dict[str, Any]
log = logging.getLogger("railnet.scheduler.claims")
RESOURCE = "/apis/resource.k8s.io/v1"
SLICES, CLAIMS, CLASSES = f"{RESOURCE}/resourceslices", f"{RESOURCE}/resourceclaims", f"{RESOURCE}/deviceclasses"
FINALIZER = "resource.kubernetes.io/delete-protection"


class DraState:
    def __init__(self) -> None:
        self.slices: dict[str, tuple[str, list[Device]]] = {}  # slice name -> (node, devices)
        self.claims: dict[str, Claim] = {}  # "namespace/name"
        self.classes: dict[str, tuple[str, ...]] = {}  # DeviceClass -> its selectors
        self.class_config: dict[str, list[JSON]] = {}
        self.ledger = Ledger()
        self.assumed: dict[str, tuple[Result, ...]] = {}  # claim uid -> results being written
        self.matcher = Matcher()
        self.device_node: dict[DeviceKey, str] = {}
        self._nodes: dict[str, NodeDevices] = {}
        self._shapes: list[NodeDevices] | None = None
        self._by_node: dict[str, set[str]] = {}  # node -> its slices' names

    # -- watch events: each returns the node names whose held devices may have changed ------------------
    def replace_slices(self, items: list[JSON]) -> set[str]:
        touched = {node for node, _ in self.slices.values()}
        self.slices.clear()
        self._by_node.clear()
        for item in items:
            touched |= self.on_slice("ADDED", item)
        return touched

    def on_slice(self, kind: str, obj: JSON) -> set[str]:
        name = obj["metadata"]["name"]
        old = self.slices.pop(name, None)
        touched = {old[0]} if old else set()
        if old:
            self._by_node.get(old[0], set()).discard(name)
            if not self._by_node.get(old[0]):
                self._by_node.pop(old[0], None)
        if kind != "DELETED":
            devices = parse_slice(obj)
            node = (obj.get("spec") or {}).get("nodeName") or ""
            if node:  # only node-local slices: railnet places on nodes
                self.slices[name] = (node, devices)
                self._by_node.setdefault(node, set()).add(name)
                for d in devices:
                    self.device_node[d.key] = node
                touched.add(node)
        for node in touched:
            self._nodes.pop(node, None)
        self._shapes = None
        return touched

    def replace_claims(self, items: list[JSON]) -> set[str]:
        touched: set[str] = set()
        for key in list(self.claims):
            touched |= self._claim_gone(key)
        for item in items:
            touched |= self.on_claim("ADDED", item)
        return touched

    def on_claim(self, kind: str, obj: JSON) -> set[str]:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if kind == "DELETED":
            return self._claim_gone(key)
        claim = parse_claim(obj)
        old = self.claims.get(key)
        if old is not None and old.uid != claim.uid:
            self._claim_gone(key)
        self.claims[key] = claim
        if claim.results is not None:
            self.assumed.pop(claim.uid, None)  # the write is seen (or someone else allocated it)
            return self._nodes_of(self.ledger.set(claim.uid, claim.results))
        if claim.uid in self.assumed:
            return set()  # our write is still on its way
        return self._nodes_of(self.ledger.set(claim.uid, None))

    def _claim_gone(self, key: str) -> set[str]:
        claim = self.claims.pop(key, None)
        if claim is None:
            return set()
        self.assumed.pop(claim.uid, None)
        return self._nodes_of(self.ledger.set(claim.uid, None))

    def replace_classes(self, items: list[JSON]) -> None:
        self.classes.clear()
        for item in items:
            self.on_class("ADDED", item)

    def on_class(self, kind: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.classes.pop(name, None)
            self.class_config.pop(name, None)
        else:
            self.classes[name] = class_selectors(obj)
            self.class_config[name] = list((obj.get("spec") or {}).get("config") or [])

    def _nodes_of(self, keys: set[DeviceKey]) -> set[str]:
        return {self.device_node[k] for k in keys if k in self.device_node}

    # -- what the loop asks -------------------------------------------------------------------------------
    def topology_changed(self, node: str) -> None:
        self._nodes.pop(node, None)
        self._shapes = None

    def node(self, name: str, topology: Mapping[str, Any] | None) -> NodeDevices:
        found = self._nodes.get(name)
        if found is None:
            devices = [d for s in sorted(self._by_node.get(name, ())) for d in self.slices[s][1]]
            found = self._nodes[name] = node_devices(name, devices, topology)
        return found

    def nodes_with_devices(self) -> KeysView[str]:
        return self._by_node.keys()

    def shapes(self, topologies: Mapping[str, Mapping[str, Any]]) -> list[NodeDevices]:
        """One node per distinct device shape."""
        if self._shapes is None:
            seen: dict[str, NodeDevices] = {}
            for name in sorted(self.nodes_with_devices()):
                nd = self.node(name, topologies.get(name))
                seen.setdefault(nd.shape, nd)
            self._shapes = list(seen.values())
        return self._shapes

    def held(self, nd: NodeDevices) -> tuple[int, int]:
        """GPU and NIC index masks of ``nd`` that claims (allocated or being written) hold."""
        gpus = nics = 0
        for device, where in zip(nd.devices, nd.place, strict=True):
            if where is not None and self.ledger.used(device.key):
                if where[0] == GPU:
                    gpus |= 1 << where[1]
                elif where[0] == NIC:
                    nics |= 1 << where[1]
        return gpus, nics

    def claims_of(self, namespace: str, names: Sequence[tuple[str, str | None]]) -> tuple[list[Claim], str | None]:
        """The pod's ResourceClaims, or why they cannot be read yet."""
        out = []
        for ref, name in names:
            if name is None:
                return [], f"waiting for the ResourceClaim of {ref!r} (made from its template by the controller manager)"
            claim = self.claims.get(f"{namespace}/{name}")
            if claim is None:
                return [], f"ResourceClaim {namespace}/{name} does not exist"
            out.append(claim)
        return out, None

    def assume(self, uid: str, results: Sequence[Result]) -> set[str]:
        self.assumed[uid] = tuple(results)
        return self._nodes_of(self.ledger.set(uid, results))

    def unassume(self, uid: str) -> set[str]:
        """A write failed: the claim holds what the API says again."""
        if self.assumed.pop(uid, None) is None:
            return set()
        claim = next((c for c in self.claims.values() if c.uid == uid), None)
        return self._nodes_of(self.ledger.set(uid, claim.results if claim else None))


@dataclass
class Write:
    """One claim to allocate (``results``; None: already allocated) and reserve for a pod."""

    claim: Claim
    results: tuple[Result, ...] | None
    node: str
    pod_name: str
    pod_uid: str


def allocation(write: Write, classes_config: Mapping[str, list[JSON]]) -> JSON:
    """``status.allocation`` as kube-scheduler writes it (class config first, then the claim's)."""
    assert write.results is not None
    requests = {r.name: r for r in write.claim.requests}
    config: list[JSON] = []
    for name, request in requests.items():
        for entry in classes_config.get(request.device_class, []):
            config.append({"source": "FromClass", "requests": [name], **entry})
    for entry in ((write.claim.raw.get("spec") or {}).get("devices") or {}).get("config") or []:
        config.append({"source": "FromClaim", **entry})
    results = []
    for r in write.results:
        item: JSON = {"request": r.request, "driver": r.driver, "pool": r.pool, "device": r.device}
        if r.share_id:
            item["shareID"] = r.share_id
            item["consumedCapacity"] = {k: str(v) for k, v in r.consumed.items()}
        results.append(item)
    devices: JSON = {"results": results}
    if config:
        devices["config"] = config
    return {"devices": devices, "allocationTimestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [write.node]}]}]}}


class ClaimWriteError(RuntimeError):
    pass


class ClaimWriter:
    def __init__(self, api: KubeApi, classes_config: Mapping[str, list[JSON]]) -> None:
        self.api, self.classes_config = api, classes_config

    def write_all(self, writes: Sequence[Write]) -> None:
        """All or none: on an error the claims written so far are put back, then ClaimWriteError."""
        done: list[tuple[Write, bool]] = []
        try:
            for w in writes:
                done.append((w, self._write(w)))
        except ClaimWriteError:
            for w, added_finalizer in reversed(done):
                self._undo(w, added_finalizer)
            raise

    def _path(self, claim: Claim) -> str:
        return f"{RESOURCE}/namespaces/{claim.namespace}/resourceclaims/{claim.name}"

    def _write(self, w: Write) -> bool:
        obj = w.claim.raw
        path = self._path(w.claim)
        added = False
        meta = obj["metadata"]
        if w.results is not None and FINALIZER not in (meta.get("finalizers") or []):
            body = {**obj, "metadata": {**meta, "finalizers": [*(meta.get("finalizers") or []), FINALIZER]}}
            status, answer = self.api.request("PUT", path, body)
            if status != 200:
                raise ClaimWriteError(_why(w, "finalizer", status, answer))
            obj, added = answer, True
        st = dict(obj.get("status") or {})
        if w.results is not None:
            if st.get("allocation"):
                raise ClaimWriteError(f"ResourceClaim {w.claim.key} was allocated by someone else meanwhile")
            st["allocation"] = allocation(w, self.classes_config)
        reserved = list(st.get("reservedFor") or [])
        if not any(r.get("uid") == w.pod_uid for r in reserved):
            reserved.append({"resource": "pods", "name": w.pod_name, "uid": w.pod_uid})
        st["reservedFor"] = reserved
        status, answer = self.api.request("PUT", f"{path}/status", {**obj, "status": st})
        if status != 200:
            if added:
                self._drop_finalizer(w)
            raise ClaimWriteError(_why(w, "status", status, answer))
        return added

    def _undo(self, w: Write, added_finalizer: bool) -> None:
        path = self._path(w.claim)
        for _ in range(3):
            status, obj = self.api.request("GET", path)
            if status != 200:
                return
            st = dict(obj.get("status") or {})
            st["reservedFor"] = [r for r in st.get("reservedFor") or [] if r.get("uid") != w.pod_uid] or None
            if w.results is not None:
                st.pop("allocation", None)
            st = {k: v for k, v in st.items() if v is not None}
            status, _ = self.api.request("PUT", f"{path}/status", {**obj, "status": st})
            if status == 409:
                continue
            if added_finalizer:
                self._drop_finalizer(w)
            return
        log.warning("claim not rolled back", extra={"claim": w.claim.key})

    def _drop_finalizer(self, w: Write) -> None:
        path = self._path(w.claim)
        for _ in range(3):
            status, obj = self.api.request("GET", path)
            if status != 200:
                return
            meta = obj["metadata"]
            body = {**obj, "metadata": {**meta, "finalizers": [f for f in meta.get("finalizers") or [] if f != FINALIZER]}}
            if self.api.request("PUT", path, body)[0] != 409:
                return


def _why(w: Write, step: str, status: int, answer: Any) -> str:
    message = answer.get("message") if isinstance(answer, dict) else str(answer)
    return f"ResourceClaim {w.claim.key}: {step} update failed: HTTP {status}: {message}"
