"""A pod's claims against a node's devices, with the core deciding GPUs and NICs.

The split: every device whose ``resource.kubernetes.io/pciBusID`` is a GPU or a NIC of the node's
NodeTopology is placed by the core (``scheduler.intranode``: exact GPU + NIC sets ranked PCIe
switch > root > NUMA > socket). A request whose devices are all GPUs asks the core for ``count``
GPUs; one whose devices are all NICs and that asks for no capacity, for ``count`` whole NICs. The
core's choice is then mapped back to DRA devices by bus ID (``assign``). A request that asks for
capacity (a bandwidth share) is served after the core, on the NIC nearest the pod's GPUs that still
has room; any other request (devices the topology does not know) takes the first free device.

Device classes and selectors are evaluated once per node shape (nodes whose devices look alike to a
selector), so a thousand identical nodes cost one evaluation per device.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduler.dra.api import Claim, Device, Request, Result
from scheduler.dra.cel import SelectorError, Selectors
from scheduler.dra.ledger import Ledger

PCI_BUS_ID = "resource.kubernetes.io/pciBusID"
GPU, NIC, SHARE, OTHER = "gpu", "nic", "share", "other"


@dataclass(frozen=True)
class NodeDevices:
    """One node's DRA devices (all drivers) and where each sits in its NodeTopology."""

    name: str
    devices: tuple[Device, ...]
    place: tuple[tuple[str, int] | None, ...]  # per device: (GPU or NIC, index in the topology)
    shape: str
    gpu_tiers: tuple[tuple[int, ...], ...] = ()  # NodeTopology gpuNic

    def position(self, kind: str, index: int) -> int | None:
        for pos, where in enumerate(self.place):
            if where == (kind, index):
                return pos
        return None


def node_devices(name: str, devices: Iterable[Device], topology: Mapping[str, Any] | None) -> NodeDevices:
    devs = tuple(sorted(devices, key=lambda d: (d.driver, d.name)))
    where: dict[str, tuple[str, int]] = {}
    for kind, items in ((GPU, (topology or {}).get("gpus") or []), (NIC, (topology or {}).get("nics") or [])):
        for index, item in enumerate(items):
            where[str(item.get("pciAddress", "")).lower()] = (kind, index)
    place = tuple(where.get(str(d.attrs.get(PCI_BUS_ID, "")).lower()) for d in devs)
    shape = "|".join(d.sig for d in devs) + repr(place)
    tiers = tuple(tuple(row) for row in (topology or {}).get("gpuNic") or [])
    return NodeDevices(name, devs, place, shape, tiers)


class Unsatisfiable(ValueError):
    """A claim no node can serve: the message is the pod's event."""


@dataclass
class Need:
    """One request of one claim that railnet allocates."""

    claim: Claim
    request: Request
    kind: str


@dataclass
class Demand:
    needs: list[Need] = field(default_factory=list)
    gpus: int = 0  # whole GPUs for the core
    nics: int = 0  # whole NICs for the core


class Matcher:
    def __init__(self, selectors: Selectors | None = None) -> None:
        self.selectors = selectors or Selectors()
        self._eligible: dict[tuple[Any, ...], tuple[int, ...]] = {}

    def eligible(self, request: Request, classes: Mapping[str, tuple[str, ...]], nd: NodeDevices) -> tuple[int, ...]:
        """Positions of the node's devices that the request's class and selectors accept."""
        class_selectors = classes.get(request.device_class)
        if class_selectors is None:
            raise Unsatisfiable(f"request {request.name}: DeviceClass {request.device_class!r} does not exist")
        key = (class_selectors, request.selectors, request.tolerations, nd.shape)
        found = self._eligible.get(key)
        if found is None:
            exprs = class_selectors + request.selectors
            try:  # a tainted device (a NIC whose link is down) only for a request that tolerates it
                found = tuple(pos for pos, dev in enumerate(nd.devices) if request.tolerates(dev)
                              and all(self.selectors.matches(e, dev) for e in exprs))
            except SelectorError as exc:
                raise Unsatisfiable(f"request {request.name}: {exc}") from None
            self._eligible[key] = found
        return found

    def demand(self, claims: Sequence[Claim], classes: Mapping[str, tuple[str, ...]],
               shapes: Iterable[NodeDevices]) -> Demand:
        """What the core must place for the unallocated claims; Unsatisfiable when no node has the devices."""
        shapes = list(shapes)
        out = Demand()
        for claim in claims:
            for request in claim.requests:
                if request.unsupported:
                    raise Unsatisfiable(f"claim {claim.name}, request {request.name}: {request.unsupported} is not "
                                        "supported by railnet's scheduler")
                kinds: set[str] = set()
                largest: dict[str, int] = {}
                for nd in shapes:
                    for pos in self.eligible(request, classes, nd):
                        where = nd.place[pos]
                        kinds.add(where[0] if where else OTHER)
                        for name, value in nd.devices[pos].capacity.items():
                            largest[name] = max(largest.get(name, 0), value)
                if not kinds:
                    exprs = classes.get(request.device_class, ()) + request.selectors
                    errors = [f"{e}: {self.selectors.errors[e]}" for e in exprs if e in self.selectors.errors]
                    raise Unsatisfiable(f"claim {claim.name}, request {request.name}: no device of class "
                                        f"{request.device_class} matches" + (f" ({'; '.join(errors)})" if errors else ""))
                for name, amount in request.capacity.items():
                    if amount > largest.get(name, 0):
                        raise Unsatisfiable(f"claim {claim.name}, request {request.name}: asks for {amount} of {name} "
                                            f"but the largest matching device has {largest.get(name, 0)}")
                if request.capacity:
                    kind = SHARE
                elif kinds == {GPU}:
                    kind = GPU
                    out.gpus += request.count
                elif kinds == {NIC}:
                    kind = NIC
                    out.nics += request.count
                else:
                    kind = OTHER
                out.needs.append(Need(claim, request, kind))
        return out

    def masks(self, demand: Demand, classes: Mapping[str, tuple[str, ...]], nd: NodeDevices) -> tuple[int, int]:
        """GPU and NIC indices on this node that some GPU / whole-NIC request of the pod accepts."""
        gpus = nics = 0
        for need in demand.needs:
            if need.kind in (GPU, NIC):
                for pos in self.eligible(need.request, classes, nd):
                    where = nd.place[pos]
                    if where is not None and where[0] == need.kind:
                        if need.kind == GPU:
                            gpus |= 1 << where[1]
                        else:
                            nics |= 1 << where[1]
        return gpus, nics

    def assign(self, demand: Demand, classes: Mapping[str, tuple[str, ...]], nd: NodeDevices, gpus: Sequence[int],
               nics: Sequence[int], rails: Sequence[tuple[int, int]], ledger: Ledger,
               tentative: list[Result]) -> dict[str, list[Result]]:
        """The core's GPUs and NICs on ``nd`` given to the requests, shares and other devices added;
        claim uid -> results. Unsatisfiable (naming the request) when this node cannot serve them.
        ``tentative`` holds results decided earlier in the same unit and gets these appended."""
        out: dict[str, list[Result]] = {}
        free_gpus = list(gpus)
        paired = {g: n for g, n in rails}
        free_nics = [paired[g] for g in gpus if g in paired] + [n for n in nics if n not in paired.values()]
        mine: list[Result] = []
        for need in demand.needs:
            request, claim = need.request, need.claim
            ok = set(self.eligible(request, classes, nd))
            for _ in range(request.count):
                if need.kind in (GPU, NIC):
                    pool = free_gpus if need.kind == GPU else free_nics
                    pick = next((i for i in pool if (p := nd.position(need.kind, i)) is not None and p in ok), None)
                    if pick is None:
                        raise Unsatisfiable(f"claim {claim.name}, request {request.name}: the devices placed on "
                                            f"{nd.name} do not match its selectors")
                    pool.remove(pick)
                    pos = nd.position(need.kind, pick)
                    assert pos is not None
                    if ledger.used(nd.devices[pos].key):  # the core's view lags the claims: never hand it out twice
                        raise Unsatisfiable(f"claim {claim.name}, request {request.name}: device "
                                            f"{nd.devices[pos].name} on {nd.name} is held by another claim")
                    result = _result(request, nd.devices[pos])
                else:
                    result = self._extra(need, nd, ok, ledger, tentative + mine, [r for r in mine])
                mine.append(result)
                out.setdefault(claim.uid, []).append(result)
        for need in demand.needs:
            for constraint in need.claim.constraints:
                _check(need.claim, constraint.requests, constraint.attribute, out.get(need.claim.uid, []), nd)
        tentative.extend(mine)
        return out

    def _extra(self, need: Need, nd: NodeDevices, ok: set[int], ledger: Ledger, taken: list[Result],
               mine: list[Result]) -> Result:
        """A share (room left, nearest the pod's GPUs) or another device (first free one)."""
        gpus = [w[1] for r in mine for pos, d in enumerate(nd.devices) if d.key == r.key
                and (w := nd.place[pos]) is not None and w[0] == GPU]
        best: tuple[Any, ...] | None = None
        for pos in sorted(ok):
            device = nd.devices[pos]
            left = ledger.remaining(device, taken)
            if left is None or (not device.shareable and any(r.key == device.key for r in taken)):
                continue
            asks = need.request.capacity or device.capacity  # no capacity asked: the whole device
            if any(left.get(name, 0) < amount for name, amount in asks.items()):
                continue
            if asks is device.capacity and left != dict(device.capacity):
                continue
            where = nd.place[pos]
            tier = min((nd.gpu_tiers[g][where[1]] for g in gpus), default=9) if where and where[0] == NIC \
                and nd.gpu_tiers else 9
            used = sum(device.capacity.values()) - sum(left.values())
            rank = (tier, -used, pos)
            if best is None or rank < best:
                best = rank
        if best is None:
            raise Unsatisfiable(f"claim {need.claim.name}, request {need.request.name}: no matching device on "
                                f"{nd.name} has room left")
        return _result(need.request, nd.devices[best[2]])


def _result(request: Request, device: Device) -> Result:
    if not device.shareable:
        return Result(request.name, device.driver, device.pool, device.name)
    consumed = dict(device.capacity)
    consumed.update(request.capacity)
    return Result(request.name, device.driver, device.pool, device.name, str(uuid.uuid4()), consumed)


def _check(claim: Claim, requests: Sequence[str], attribute: str, results: Sequence[Result], nd: NodeDevices) -> None:
    by_key = {d.key: d for d in nd.devices}
    values = set()
    for r in results:
        if requests and r.request not in requests:
            continue
        device = by_key[r.key]
        if attribute not in device.attrs:
            raise Unsatisfiable(f"claim {claim.name}: matchAttribute {attribute}: device {device.name} does not have it")
        values.add(str(device.attrs[attribute]))
    if len(values) > 1:
        raise Unsatisfiable(f"claim {claim.name}: matchAttribute {attribute}: no devices with one value free "
                            f"together on {nd.name}")
