"""One scheduling unit's ResourceClaims, around the core's plan (the loop calls these in order).

1. ``resolve``: each pod's claims from the cache; the GPUs and whole NICs they ask for are added to
   the pod's ``spec``/``res`` (so quota counts claim GPUs like ``nvidia.com/gpu``), or the unit gets a
   problem (no such class, a selector no device passes, a share larger than any NIC, a claim the
   controller manager has not made yet). A claim already allocated (by kube-scheduler, an earlier
   leader, or an earlier try whose bind failed) is not allocated again: it pins the pod to its node
   and only ``reservedFor`` is added.
2. ``exclude``: nodes that cannot serve the claims (no slices, no NodeTopology, no NIC with room for a
   share, not the pinned node).
3. ``mask``: on the planning view, devices no request of the unit accepts are reserved by a scratch
   allocation (``MASK``), so the core picks among the eligible ones only; ``unmask`` drops them before
   the commit.
4. ``assign``: the core's plan mapped to DRA devices per claim (match.py); a node where that fails
   (a constraint, a selector the union mask let through, no share left) is reported so the loop can
   block it and plan again.
5. ``assume``: the results enter the device ledger before the writes, so the next unit sees them.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, field, replace

from scheduler.dra.api import Claim, Result
from scheduler.dra.match import NIC, SHARE, Demand, NodeDevices, Unsatisfiable
from scheduler.gang import GangPlan
from scheduler.live.cache import PodState, SchedulerCache
from scheduler.live.claims import Write
from scheduler.live.objects import Resources
from scheduler.model import MILLI, Allocation, PodSpec
from scheduler.topology import bits
from scheduler.view import ClusterView

MASK = "[dra-mask]/"


@dataclass
class PodClaims:
    pod: PodState
    demand: Demand
    allocated: list[Claim]  # already allocated: reserve only
    pinned: str | None  # the node those claims' devices are on


@dataclass
class UnitClaims:
    pods: dict[str, PodClaims] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    results: dict[str, tuple[Result, ...]] = field(default_factory=dict)  # claim uid -> results decided


class DraUnits:
    def __init__(self, cache: SchedulerCache) -> None:
        self.cache = cache
        self._base: dict[str, tuple[PodState, Resources, PodSpec]] = {}  # pod -> its own requests

    def resolve(self, pods: Iterable[PodState]) -> tuple[UnitClaims | None, str | None, bool]:
        """The unit's claims, or (None, problem, transient): transient while claims are being made."""
        dra, cache = self.cache.dra, self.cache
        out = UnitClaims()
        for pod in pods:
            if not pod.claims:
                continue
            claims, missing = dra.claims_of(pod.namespace, pod.claims)
            if missing:
                return None, f"pod {pod.key}: {missing}", "waiting" in missing
            todo = [c for c in claims if c.results is None]
            allocated = [c for c in claims if c.results is not None]
            pinned = None
            for claim in allocated:
                assert claim.results is not None
                nodes = {dra.device_node.get(r.key, r.pool) for r in claim.results}
                if pinned is not None:
                    nodes.add(pinned)
                if len(nodes) > 1:
                    return None, f"pod {pod.key}: its allocated claims are on different nodes ({sorted(nodes)})", False
                pinned = next(iter(nodes), pinned)
            try:
                demand = dra.matcher.demand(todo, dra.classes, dra.shapes(cache.topologies))
            except Unsatisfiable as exc:
                return None, f"pod {pod.key}: {exc}", False
            self._add_devices(pod, demand)
            out.pods[pod.key] = PodClaims(pod, demand, allocated, pinned)
        return out, None, False

    def _add_devices(self, pod: PodState, demand: Demand) -> None:
        base = self._base.get(pod.key)
        if base is None or base[0] is not pod:
            base = self._base[pod.key] = (pod, pod.res, pod.spec)
        _, res, spec = base
        gpus, nics = spec.num_gpu + demand.gpus, spec.rdma_nics + demand.nics
        pod.res = replace(res, gpus=res.gpus + demand.gpus, rdma=res.rdma + demand.nics)
        pod.spec = replace(spec, num_gpu=gpus, gpu_milli=spec.gpu_milli or (MILLI if gpus else 0), rdma_nics=nics)

    def prune(self, waiting: Container[str]) -> None:
        """Forget the requests of pods that no longer wait (bound or gone)."""
        if len(self._base) > 64:
            self._base = {k: v for k, v in self._base.items() if k in waiting}

    def node_devices(self, name: str) -> NodeDevices:
        return self.cache.dra.node(name, self.cache.topologies.get(name))

    def exclude(self, unit: UnitClaims, skip: set[int]) -> tuple[set[int], dict[str, int]]:
        """Nodes (not already in ``skip``) that cannot serve the unit's claims, and how many per reason."""
        cache, dra = self.cache, self.cache.dra
        with_devices = dra.nodes_with_devices()
        out: set[int] = set()
        reasons: dict[str, int] = {}

        def no(index: int, why: str) -> None:
            out.add(index)
            reasons[why] = reasons.get(why, 0) + 1

        for node in cache.cluster.nodes:
            if node.index in skip:
                continue
            if node.name not in with_devices:
                no(node.index, "no ResourceSlices")
                continue
            nd = self.node_devices(node.name)
            for pc in unit.pods.values():
                if pc.pinned is not None and pc.pinned != node.name:
                    no(node.index, "not the node of the pod's allocated claims")
                    break
                if (pc.demand.gpus or pc.demand.nics) and node.name not in cache.topologies:
                    no(node.index, "no NodeTopology")
                    break
                if not self._extras_fit(pc, nd):
                    no(node.index, "no device with room for a claim's request")
                    break
        return out, reasons

    def _extras_fit(self, pc: PodClaims, nd: NodeDevices) -> bool:
        """A quick per-node check for shares and other devices (the exact one is ``assign``)."""
        dra = self.cache.dra
        for need in pc.demand.needs:
            if need.kind not in (SHARE, "other"):
                continue
            eligible = dra.matcher.eligible(need.request, dra.classes, nd)
            if not any(_room(dra.ledger.remaining(nd.devices[p]), need.request.capacity or nd.devices[p].capacity)
                       for p in eligible):
                return False
        return True

    def mask(self, view: ClusterView, unit: UnitClaims, blocked: set[int]) -> None:
        dra = self.cache.dra
        want_gpus = any(pc.demand.gpus for pc in unit.pods.values())
        want_nics = any(pc.demand.nics for pc in unit.pods.values())
        if not want_gpus and not want_nics:
            return
        by_shape: dict[str, tuple[int, int]] = {}  # what the unit accepts, per node shape
        for node in self.cache.cluster.nodes:
            if node.index in blocked:
                continue
            nd = self.node_devices(node.name)
            accepted = by_shape.get(nd.shape)
            if accepted is None:
                gpus = nics = 0
                for pc in unit.pods.values():
                    g, n = dra.matcher.masks(pc.demand, dra.classes, nd)
                    gpus |= g if pc.demand.gpus else 0
                    nics |= n if pc.demand.nics else 0
                accepted = by_shape[nd.shape] = (gpus, nics)
            live = view.node(node.index)
            bad_gpus = live.whole_free & ~accepted[0] if want_gpus else 0
            bad_nics = live.nic_free & ~accepted[1] if want_nics else 0
            if bad_gpus or bad_nics:
                view.reserve(Allocation(MASK + node.name, node.index, 0, 0, tuple(bits(bad_gpus)),
                                        MILLI if bad_gpus else 0, tuple(bits(bad_nics))))

    @staticmethod
    def unmask(view: ClusterView) -> None:
        view.reserved = [a for a in view.reserved if not a.pod.startswith(MASK)]

    def assign(self, unit: UnitClaims, plan: GangPlan) -> tuple[int, str] | None:
        """Fill ``unit.writes``; on failure (node index, why) and nothing kept."""
        cache, dra = self.cache, self.cache.dra
        tentative: list[Result] = []
        writes: list[Write] = []
        results: dict[str, tuple[Result, ...]] = {}
        for alloc in plan.allocations:
            pc = unit.pods.get(alloc.pod)
            if pc is None:
                continue
            node = cache.cluster.nodes[alloc.node]
            nd = self.node_devices(node.name)
            core_gpus = alloc.gpus[len(alloc.gpus) - pc.demand.gpus:] if pc.demand.gpus else ()
            try:
                by_claim = dra.matcher.assign(pc.demand, dra.classes, nd, core_gpus, alloc.nics, alloc.rails,
                                              dra.ledger, tentative)
            except Unsatisfiable as exc:
                return alloc.node, str(exc)
            for need in pc.demand.needs:
                claim = need.claim
                if claim.uid in results:
                    continue
                results[claim.uid] = tuple(by_claim.get(claim.uid, ()))
                writes.append(Write(claim, results[claim.uid], node.name, pc.pod.name, pc.pod.uid))
            for claim in pc.allocated:
                if pc.pod.uid not in claim.reserved_for:
                    writes.append(Write(claim, None, node.name, pc.pod.name, pc.pod.uid))
        unit.writes, unit.results = writes, results
        return None

    def assume(self, unit: UnitClaims) -> None:
        touched: set[str] = set()
        for uid, results in unit.results.items():
            touched |= self.cache.dra.assume(uid, results)
        for name in touched:
            self.cache.sync_hold(name)

    def unassume(self, unit: UnitClaims) -> None:
        touched: set[str] = set()
        for uid in unit.results:
            touched |= self.cache.dra.unassume(uid)
        for name in touched:
            self.cache.sync_hold(name)


def _room(left: object, asks: object) -> bool:
    if left is None:
        return False
    assert isinstance(left, dict) and isinstance(asks, dict)
    return all(left.get(k, 0) >= v for k, v in asks.items())


__all__ = ["MASK", "NIC", "DraUnits", "PodClaims", "UnitClaims"]
