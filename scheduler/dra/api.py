"""resource.k8s.io/v1 objects as the scheduler needs them: parsed once, when the watch delivers them.

Attribute names are kept fully qualified (`<domain>/<name>`; an unqualified name belongs to the
device's driver, as the API says). Quantities (capacity, capacity requests) become integers of base
units. Anything railnet's scheduler does not implement (``firstAvailable``, ``allocationMode: All``,
``adminAccess``) is recorded as ``unsupported`` on the request, so the pod gets an event naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.live.objects import quantity

JSON = dict[str, Any]
DeviceKey = tuple[str, str, str]  # driver, pool, device


def _int(text: Any) -> int:
    return int(quantity(text))


@dataclass(frozen=True)
class Device:
    driver: str
    pool: str
    name: str
    node: str
    attrs: Mapping[str, Any]  # qualified name -> str | int | bool
    capacity: Mapping[str, int]  # qualified name -> base units
    shareable: bool  # allowMultipleAllocations
    sig: str  # what selectors can see: equal on nodes of one shape (the pool name left out)
    taints: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect) of NoSchedule/NoExecute taints

    @property
    def key(self) -> DeviceKey:
        return (self.driver, self.pool, self.name)


def _qualify(driver: str, name: str) -> str:
    return name if "/" in name else f"{driver}/{name}"


def parse_slice(obj: Mapping[str, Any]) -> list[Device]:
    """The devices of one ResourceSlice (none when it is not bound to a single node)."""
    spec = obj.get("spec") or {}
    driver, node = spec.get("driver", ""), spec.get("nodeName") or ""
    pool = (spec.get("pool") or {}).get("name", "")
    out = []
    for dev in spec.get("devices") or []:
        attrs: dict[str, Any] = {}
        for name, value in (dev.get("attributes") or {}).items():
            for kind in ("string", "int", "bool", "version"):
                if kind in value:
                    attrs[_qualify(driver, name)] = value[kind]
        cap = {_qualify(driver, k): _int(v.get("value", 0)) for k, v in (dev.get("capacity") or {}).items()}
        shareable = bool(dev.get("allowMultipleAllocations"))
        taints = tuple((str(t.get("key", "")), str(t.get("value", "")), str(t.get("effect", "")))
                       for t in dev.get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute"))
        sig = hashlib.sha1(json.dumps([driver, dev.get("name"), attrs, cap, shareable, taints], sort_keys=True,
                                      default=str).encode()).hexdigest()
        out.append(Device(driver, pool, dev["name"], node, attrs, cap, shareable, sig, taints))
    return out


@dataclass(frozen=True)
class Request:
    name: str
    device_class: str
    selectors: tuple[str, ...]
    count: int
    capacity: Mapping[str, int] = field(default_factory=dict)  # capacity.requests
    unsupported: str | None = None
    tolerations: tuple[tuple[str, str, str, str], ...] = ()  # (key, operator, value, effect)

    def tolerates(self, device: Device) -> bool:
        """Every NoSchedule/NoExecute taint of the device is tolerated (DeviceToleration's rules: operator
        Equal (the default) matches key and value, Exists any value, an empty key with Exists every taint;
        an empty effect matches every effect)."""
        return all(any(_tolerates(t, taint) for t in self.tolerations) for taint in device.taints)


def _tolerates(toleration: tuple[str, str, str, str], taint: tuple[str, str, str]) -> bool:
    key, operator, value, effect = toleration
    if effect and effect != taint[2]:
        return False
    if operator == "Exists":
        return not key or key == taint[0]
    return key == taint[0] and value == taint[1]


@dataclass(frozen=True)
class Constraint:
    requests: tuple[str, ...]  # empty: every request of the claim
    attribute: str


@dataclass(frozen=True)
class Result:
    request: str
    driver: str
    pool: str
    device: str
    share_id: str | None = None
    consumed: Mapping[str, int] = field(default_factory=dict)

    @property
    def key(self) -> DeviceKey:
        return (self.driver, self.pool, self.device)


@dataclass(frozen=True)
class Claim:
    namespace: str
    name: str
    uid: str
    rv: str
    requests: tuple[Request, ...]
    constraints: tuple[Constraint, ...]
    results: tuple[Result, ...] | None  # status.allocation, None when not allocated
    reserved_for: tuple[str, ...]  # pod uids
    raw: JSON  # the object as the watch gave it (for status writes)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _request(item: Mapping[str, Any]) -> Request:
    name = item.get("name", "")
    if "firstAvailable" in item:
        return Request(name, "", (), 0, unsupported="firstAvailable (prioritized lists)")
    exact = item.get("exactly") or {}
    if exact.get("allocationMode", "ExactCount") != "ExactCount":
        return Request(name, "", (), 0, unsupported=f"allocationMode {exact.get('allocationMode')}")
    if exact.get("adminAccess"):
        return Request(name, "", (), 0, unsupported="adminAccess")
    selectors = tuple(s["cel"]["expression"] for s in exact.get("selectors") or [] if "cel" in s)
    cap = {k: _int(v) for k, v in ((exact.get("capacity") or {}).get("requests") or {}).items()}
    tolerations = tuple((str(t.get("key", "")), str(t.get("operator") or "Equal"), str(t.get("value", "")),
                         str(t.get("effect", ""))) for t in exact.get("tolerations") or [])
    return Request(name, exact.get("deviceClassName", ""), selectors, int(exact.get("count") or 1), cap,
                   tolerations=tolerations)


def parse_claim(obj: Mapping[str, Any]) -> Claim:
    meta, spec = obj["metadata"], (obj.get("spec") or {}).get("devices") or {}
    status = obj.get("status") or {}
    requests = tuple(_request(r) for r in spec.get("requests") or [])
    constraints = tuple(Constraint(tuple(c.get("requests") or ()), c["matchAttribute"])
                        for c in spec.get("constraints") or [] if c.get("matchAttribute"))
    results = None
    if status.get("allocation"):
        results = tuple(
            Result(r["request"], r["driver"], r["pool"], r["device"], r.get("shareID"),
                   {k: _int(v) for k, v in (r.get("consumedCapacity") or {}).items()})
            for r in (status["allocation"].get("devices") or {}).get("results") or [])
    reserved = tuple(r.get("uid", "") for r in status.get("reservedFor") or [])
    return Claim(meta["namespace"], meta["name"], meta.get("uid", ""), meta.get("resourceVersion", ""),
                 requests, constraints, results, reserved, dict(obj))


def class_selectors(obj: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(s["cel"]["expression"] for s in (obj.get("spec") or {}).get("selectors") or [] if "cel" in s)


def pod_claims(pod: Mapping[str, Any]) -> tuple[tuple[str, str | None], ...]:
    """(pod claim name, ResourceClaim name or None while KCM has not made it) for each spec.resourceClaims."""
    made = {s["name"]: s.get("resourceClaimName") for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
    out = []
    for ref in (pod.get("spec") or {}).get("resourceClaims") or []:
        if ref.get("resourceClaimName"):
            out.append((ref["name"], ref["resourceClaimName"]))
        else:
            out.append((ref["name"], made.get(ref["name"])))
    return tuple(out)
