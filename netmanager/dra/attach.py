"""A claim's NIC for the meta plugin, and the claim's `status.devices[].networkData` back.

The meta plugin asks for "the NIC of request R of ResourceClaim ns/name, for pod P". The answer is
built only from what the pod cannot write:
- the claim from the API server: its UID, `status.reservedFor` (the pod must be in it: the scheduler
  put it there), `status.allocation` (the request's device of driver rdma.railnet.io, from this
  node's pool);
- this agent's prepared record (`<state dir>/dra/claims/<uid>.json`, written by NodePrepareResources
  for this node): the device must be in it, prepared;
- this node's discovered topology: device name -> PCI address, netdev, VF or PF.
A bandwidth share (the allocation's `consumedCapacity` of `rdma.railnet.io/bandwidth`, as recorded at
prepare) smaller than the NIC becomes the egress rate to enforce.

`networkData` goes into `status.devices` (a list: the whole list is sent in one merge patch guarded
by the claim's resourceVersion; a 409 re-reads and retries); entries of other drivers and devices are
kept as they are. The API server checks that the writer may update `resourceclaims/driver` for this
driver (docs/dra.md, "networkData").
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Protocol

from cni.meta.claims import ClaimDevice
from cni.spec.errors import INVALID_CONFIG, MASTER_NOT_FOUND, TRY_AGAIN_LATER, CniError
from netmanager.dra import DRIVER
from netmanager.dra.prepare import ClaimStore
from netmanager.dra.slices import BANDWIDTH, nic_by_device
from netmanager.topology.model import NodeTopology

_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE]?)$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(text: str) -> Fraction:
    """A Kubernetes resource.Quantity (`200G`, `400000M`, `1.5Gi`, `25e9`) as an exact number."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number, suffix = Fraction(match.group(1)), match.group(2)
    if suffix in _BINARY:
        return number * Fraction(1024) ** _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * Fraction(10) ** _DECIMAL[suffix]


class ClaimApi(Protocol):
    def claim(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def patch_claim_status(self, namespace: str, name: str, body: dict[str, Any]) -> None: ...


def _bad(msg: str, details: str = "") -> CniError:
    return CniError(INVALID_CONFIG, msg, details)


class ClaimAttachments:
    """cni.meta.claims.ClaimSource for this node's DRA driver."""

    def __init__(self, node_name: str, store: ClaimStore, api: ClaimApi,
                 topology: Callable[[], NodeTopology]) -> None:
        self.node_name = node_name
        self.store = store
        self.api = api
        self.topology = topology

    def _claim(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            claim = self.api.claim(namespace, name)
        except Exception as exc:  # the API server: a retry may cure it
            raise CniError(TRY_AGAIN_LATER, f"cannot read ResourceClaim {namespace}/{name}",
                           f"{type(exc).__name__}: {exc}") from None
        if claim is None:
            raise _bad(f"ResourceClaim {namespace}/{name} does not exist")
        return claim

    def device(self, namespace: str, claim: str, pod_uid: str, request: str | None) -> ClaimDevice:
        where = f"ResourceClaim {namespace}/{claim}"
        obj = self._claim(namespace, claim)
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        status = obj.get("status") or {}
        if not any(r.get("resource") == "pods" and r.get("uid") == pod_uid for r in status.get("reservedFor") or []):
            raise _bad(f"{where} is not reserved for this pod",
                       "a pod may attach only claims the scheduler reserved for it (status.reservedFor)")
        results = ((status.get("allocation") or {}).get("devices") or {}).get("results") or []
        if not results:
            raise _bad(f"{where} is not allocated")
        if request is not None:  # a request, or one of its firstAvailable subrequests (request/sub)
            results = [r for r in results if r.get("request") == request
                       or str(r.get("request", "")).startswith(request + "/")]
            if not results:
                raise _bad(f"{where} has no request {request!r}",
                           "resourceClaim.requestName names a request of the claim's spec.devices.requests")
        ours = [r for r in results if r.get("driver") == DRIVER]
        if not ours:
            drivers = ", ".join(sorted({str(r.get("driver")) for r in results}))
            raise _bad(f"{where}{f' request {request!r}' if request else ''} holds no {DRIVER} device "
                       f"(its devices are of {drivers})", f"a network attaches an RDMA NIC of driver {DRIVER}; "
                       "name the claim request that asks for one (deviceClassName: rdma.railnet.io)")
        if len(ours) > 1:
            names = ", ".join(f"{r.get('request')}: {r.get('device')}" for r in ours)
            raise _bad(f"{where} holds {len(ours)} {DRIVER} devices ({names}); a network takes one",
                       "name one request in resourceClaim.requestName, one network per NIC (a request with "
                       "count > 1 needs one request per NIC)")
        result = ours[0]
        pool, name = str(result.get("pool", "")), str(result.get("device", ""))
        if pool != self.node_name:
            raise _bad(f"{where}: device {name} is from pool {pool!r}, not this node's ({self.node_name!r})",
                       "the claim was allocated for another node")
        record = self.store.get(uid) if uid else None
        if record is None or record.state != "prepared":
            raise CniError(TRY_AGAIN_LATER, f"{where} is not prepared on node {self.node_name}",
                           "the kubelet prepares a pod's claims before its sandbox; try again")
        prepared = next((d for d in record.devices if d.pool_name == pool and d.device_name == name
                         and d.share_id == result.get("shareID")), None)
        if prepared is None:
            raise CniError(TRY_AGAIN_LATER, f"{where}: device {name} is not in this node's prepared record",
                           "the claim was re-allocated since it was prepared; the kubelet prepares it again")
        nic = nic_by_device(self.topology()).get(name)
        if nic is None:
            raise CniError(MASTER_NOT_FOUND, f"{where}: device {name} is no longer an RDMA NIC of this node",
                           "the NIC (or its RDMA device) went away after the claim was allocated")
        egress = None
        share = prepared.consumed_capacity.get(BANDWIDTH)
        if share and nic.speed_mbps:
            bps = parse_quantity(share)
            if bps < nic.speed_mbps * 1_000_000:  # a share of the NIC, not all of it
                egress = int(bps)
        return ClaimDevice(namespace, claim, uid, str(result.get("request", "")), DRIVER, pool, name,
                           nic.pci_address, nic.name if nic.netdev_present else None, nic.is_vf, nic.rdma_device,
                           nic.pf_pci_address, prepared.share_id, egress)

    def set_network_data(self, device: ClaimDevice, data: dict[str, Any] | None) -> None:
        """status.devices[] entry of (driver, pool, device, shareID) gets `networkData` (None: the
        entry is dropped). Guarded by resourceVersion; a conflict re-reads, up to 5 times."""
        for attempt in range(5):
            obj = self.api.claim(device.claim_namespace, device.claim_name)
            if obj is None or (obj.get("metadata") or {}).get("uid") != device.claim_uid:
                return  # the claim is gone (DEL after the pod): nothing to clear
            entries = list((obj.get("status") or {}).get("devices") or [])
            key = (device.driver, device.pool, device.device, device.share_id)
            kept = [e for e in entries
                    if (e.get("driver"), e.get("pool"), e.get("device"), e.get("shareID")) != key]
            if data is not None:
                entry: dict[str, Any] = {"driver": device.driver, "pool": device.pool, "device": device.device,
                                         "networkData": data}
                if device.share_id:
                    entry["shareID"] = device.share_id
                kept.append(entry)
            elif len(kept) == len(entries):
                return  # nothing of ours to clear
            body = {"metadata": {"uid": device.claim_uid, "resourceVersion": obj["metadata"]["resourceVersion"]},
                    "status": {"devices": kept}}
            try:
                self.api.patch_claim_status(device.claim_namespace, device.claim_name, body)
                return
            except Exception as exc:
                if getattr(exc, "status", 0) != 409 or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
