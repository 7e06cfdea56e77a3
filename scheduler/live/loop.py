"""`railnet scheduler`: caches -> decide (the pure core) -> act, under a Lease.

One cycle, under the cache lock: rebuild the ``Cluster`` if nodes changed, turn pending pods into
units (single pods and gangs, ``gangs.collect``), and for each unit plan in a ``ClusterView`` in
which the nodes its taints/selector/affinity rule out are blocked. A plan is committed to the
ledger and assumed at once, so the next unit sees it; then its binds go to the binder's pool. A
unit that does not fit gets an event saying why and a back-off; a gang past its timeout gets a
``GangTimeout`` event (it never holds devices while waiting: plans are all or nothing).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Container
from typing import Any

from scheduler.gang import Gang, GangPlan, plan_gang
from scheduler.live import allocation, explain, gangs, hostports, interpod, logs, quotas, reservation
from scheduler.live.binder import Binder, Decision, Events
from scheduler.live.cache import SchedulerCache
from scheduler.live.claims import CLAIMS, CLASSES, SLICES, ClaimWriteError, ClaimWriter
from scheduler.live.dra_unit import DraUnits, UnitClaims
from scheduler.live.evictor import Evictor
from scheduler.live.kubeapi import KubeApi, endpoint_from_config
from scheduler.live.leader import LeaderElector
from scheduler.live.metrics import Metrics
from scheduler.live.podgroup_status import PODGROUPS, PodGroupStatusWriter
from scheduler.live.quota_status import QuotaStatusWriter
from scheduler.live.reflector import Reflector
from scheduler.live.status import StatusWriter
from scheduler.model import Allocation
from scheduler.quota import Verdict
from scheduler.view import ClusterView

log = logging.getLogger("railnet.scheduler")
TOPOLOGIES = "/apis/railnet.io/v1alpha1/nodetopologies"
MAX_UNITS_PER_CYCLE = 2000  # let watch events in between long backlogs
SHORT_GANG_GRACE_S = 2.0  # a gang still being created is not reported as short before this
DRA_TRIES = 8  # nodes tried for a unit whose claims the core's first choice cannot serve (a constraint)


class Scheduler:
    def __init__(self, api: KubeApi, cache: SchedulerCache, metrics: Metrics, is_leader: Callable[[], bool],
                 bind_workers: int = 64, dry_run: bool = False, reserve: bool = True,
                 hold_s: float = reservation.DEFAULT_HOLD_S, assume_ttl: float = 30.0) -> None:
        self.api, self.cache, self.metrics, self.is_leader, self.dry_run = api, cache, metrics, is_leader, dry_run
        self.reserve, self.hold_s, self.assume_ttl = reserve, hold_s, assume_ttl
        self.reservation: reservation.Reservation | None = None
        self._no_reserve: dict[str, float] = {}  # unit -> monotonic time before which it may not reserve
        self._pools = [_pool(4), _pool(4), _pool(2), _pool(2)]  # events, evictions, quota / PodGroup status
        self.binder = Binder(api, cache, metrics, Events(api, self._pools[0], cache.scheduler_name), is_leader,
                             bind_workers)
        self.events = self.binder.events
        self.evictor = Evictor(api, self.events, self._pools[1], metrics)
        self.quota_status = QuotaStatusWriter(api, self.events, self._pools[2])
        self.podgroup_status = PodGroupStatusWriter(StatusWriter(api, self._pools[3], PODGROUPS))
        self.stop = threading.Event()
        self.reflectors: list[Reflector] = []
        self._gang_first_fail: dict[str, float] = {}
        # unit -> (cache.freed at failure, retry at, its pending members then): a unit is retried
        # before its back-off ends when something was freed or its pending members changed
        self._unit_fail: dict[str, tuple[int, float, int]] = {}
        self._short_since: dict[str, float] = {}  # gang -> when it was first seen with too few pods
        self._gang_complete: dict[str, float] = {}  # gang -> when it was first tried with enough pods
        self._anti_held: bool | None = None  # does a placed pod carry anti-affinity (per cycle, lazily)
        self.dra = DraUnits(cache)
        self.claim_writer = ClaimWriter(api, cache.dra.class_config)
        self._claim_pool = _pool(32)  # claim status writes, then the unit's binds

    # -- caches ------------------------------------------------------------------------------------------
    def start_caches(self) -> None:
        c = self.cache
        specs = [
            ("nodes", "/api/v1/nodes", c.replace_nodes, c.on_node),
            ("pods", "/api/v1/pods?fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed",
             c.replace_pods, c.on_pod),
            ("nodetopologies", TOPOLOGIES, c.replace_topologies, c.on_topology),
            ("podgroups", PODGROUPS, c.replace_podgroups, c.on_podgroup),
            ("elasticquotas", quotas.ELASTIC_QUOTAS, c.replace_quotas, c.on_quota),
            ("namespaces", "/api/v1/namespaces", c.replace_namespaces, c.on_namespace),
            ("resourceslices", SLICES, c.replace_slices, c.on_slice),
            ("resourceclaims", CLAIMS, c.replace_claims, c.on_claim),
            ("deviceclasses", CLASSES, c.replace_classes, c.on_class),
        ]
        for name, path, replace, on_event in specs:
            # namespaces only serve namespaceSelectors in pod affinity: a deployment without the
            # right to list them still schedules (such selectors then match no namespace)
            # DRA objects too: without the API or the right to read them, pods without claims still schedule
            reflector = Reflector(self.api, path, replace, on_event, self.stop, name=name,
                                  optional=name in ("namespaces", "resourceslices", "resourceclaims", "deviceclasses"))
            reflector.start()
            self.reflectors.append(reflector)

    def wait_synced(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        return all(r.synced.wait(max(deadline - time.monotonic(), 0)) for r in self.reflectors)

    def resync_pods(self) -> None:
        """A fresh quorum list of pods before the first decision as leader: binds the previous leader
        made but this replica has not seen yet are in the ledger before anything is planned."""
        for reflector in self.reflectors:
            if reflector.name == "reflector-pods":
                reflector.relist()

    # -- one cycle -----------------------------------------------------------------------------------------
    def cycle(self) -> list[Decision]:
        decisions: list[Decision] = []
        cache = self.cache
        now = time.monotonic()
        with cache.lock:
            self._anti_held = None
            for key in cache.expire_assumed(now, self.assume_ttl):
                log.warning("assumed pod expired", extra={"pod": key, "ttl_s": self.assume_ttl})
            if cache.dirty:
                cache.rebuild()
            if cache.podgroups and not self.dry_run:
                self.podgroup_status.sync(cache, now)
            units = gangs.collect(cache.pending(now), cache.pods, cache.podgroups, cache.cluster.allocations,
                                  gang_members=cache.gang_members)
            self.metrics.set("pending", sum(len(u.pods) for u in units))
            claims = self._resolve_claims(units)
            book = quotas.build(cache, ((u.key, u.pods) for u in units if not u.problem)) if cache.quotas else None
            if book is not None and not self.dry_run:
                self.quota_status.sync(cache.quotas, book)
            self._check_reservation(units, now)
            done = 0
            for unit in units:
                if done >= MAX_UNITS_PER_CYCLE:
                    break
                failed = self._unit_fail.get(unit.key)
                if failed and failed[0] == cache.freed and failed[1] > now and failed[2] == len(unit.pods):
                    continue
                done += 1
                unit_claims = claims.get(unit.key)
                placed = self._schedule(unit, now, book, unit_claims)
                if placed and not self.dry_run:
                    # bind each unit as soon as it is assumed, not after the whole cycle: its calls
                    # are in flight while later units are planned (the workers need no cache lock
                    # until a bind answers)
                    if unit_claims is not None and unit_claims.writes:
                        self._claim_pool.submit(self._write_claims_then_bind, unit_claims, placed, unit.gang is not None)
                    else:
                        self.binder.submit_all(placed, gang=unit.gang is not None)
                decisions += placed
            if len(self._short_since) + len(self._gang_complete) > len(units):
                keys = {u.key for u in units}
                self._short_since = {k: v for k, v in self._short_since.items() if k in keys}
                self._gang_complete = {k: v for k, v in self._gang_complete.items() if k in keys}
        return decisions

    def _resolve_claims(self, units: list[gangs.Unit]) -> dict[str, UnitClaims]:
        """Each unit's ResourceClaims (dra_unit.py); a unit whose claims cannot be served gets a problem."""
        out: dict[str, UnitClaims] = {}
        self.dra.prune(self.cache.waiting)
        for unit in units:
            if unit.problem or not any(p.claims for p in unit.pods):
                continue
            found, problem, transient = self.dra.resolve(unit.pods)
            if found is None:
                unit.problem, unit.short = problem, transient
            else:
                out[unit.key] = found
        return out

    def _write_claims_then_bind(self, claims: UnitClaims, placed: list[Decision], gang: bool) -> None:
        """The unit's claims all allocated and reserved, then its binds; a failed write puts every
        claim back and the pods wait again (claims.py ClaimWriter)."""
        try:
            if not self.is_leader():
                raise ClaimWriteError("lost the lease before writing the claims")
            self.claim_writer.write_all(claims.writes)
        except Exception as exc:
            log.warning("claims not written", extra={"pods": [d.pod.key for d in placed], "error": str(exc)})
            with self.cache.lock:
                self.dra.unassume(claims)
                for d in placed:
                    self.cache.forget(d.pod.key)
            for d in placed:
                self.events.pod(d.pod, "FailedScheduling", f"ResourceClaims not allocated: {exc}")
            return
        self.binder.submit_all(placed, gang=gang)

    def _schedule(self, unit: gangs.Unit, now: float, book: quotas.QuotaBook | None = None,
                  claims: UnitClaims | None = None) -> list[Decision]:
        cache = self.cache
        if unit.problem:
            if unit.short:  # members may still be on their way: say so only once it lasts
                since = self._short_since.setdefault(unit.key, now)
                quiet = now - since < SHORT_GANG_GRACE_S
                self._fail(unit, "FailedScheduling", unit.problem, now, quiet=quiet,
                           delay=max(SHORT_GANG_GRACE_S - (now - since), 0.05) if quiet else None)
            else:
                self._fail(unit, "FailedScheduling", unit.problem, now)
            return []
        self._short_since.pop(unit.key, None)
        if unit.gang:
            self._gang_complete.setdefault(unit.key, now)
        if book is not None:
            admission = book.admit(unit.key, unit.pods)
            if admission.verdict is Verdict.RECLAIM:
                self._reclaim(unit, admission, book)
                self._fail(unit, "WaitingForQuotaReclaim", admission.message, now)
                return []
            if admission.verdict is not Verdict.ADMIT:
                self._fail(unit, "FailedScheduling", admission.message, now)
                return []
        t0 = time.monotonic()
        gang = unit.core_gang()
        view = ClusterView(cache.cluster)
        blocked: set[int] = set()
        reasons: dict[str, int] = {}
        for pod in unit.pods:
            excluded, why = cache.excluded(pod.constraints)
            blocked.update(excluded)
            for k, v in why.items():
                reasons[k] = max(reasons.get(k, 0), v)
        affinity = self._affinity(unit)
        by_nodes, node_reasons = set(blocked), dict(reasons)  # without inter-pod affinity
        if affinity is not None:
            for pod in unit.pods:  # a node already ruled out is counted once, under the node filter's reason
                excluded_by, why = affinity.excluded(pod, skip=by_nodes)
                blocked.update(excluded_by)
                for k, v in why.items():
                    reasons[k] = max(reasons.get(k, 0), v)
        if claims is not None:
            dra_out, dra_why = self.dra.exclude(claims, blocked)
            blocked.update(dra_out)
            by_nodes.update(dra_out)
            for k, v in dra_why.items():
                reasons[k] = node_reasons[k] = v
        own = set(blocked)  # what the unit's own constraints rule out
        held = self.reservation
        if held is not None and held.key != unit.key and unit.order > held.order:
            reserved = [i for i in reservation.indices(cache.cluster, held) if i not in own]
            if reserved:
                blocked.update(reserved)
                reasons[f"the reservation of {held.key}"] = len(reserved)
                by_nodes.update(reserved)
                node_reasons[f"the reservation of {held.key}"] = len(reserved)
        why_not: str | None = None
        plan: GangPlan | None = None
        for _ in range(DRA_TRIES if claims is not None else 1):
            view = ClusterView(cache.cluster)
            for index in blocked:
                view.block(index)
            if claims is not None:
                self.dra.mask(view, claims, blocked)
            plan, why_not = hostports.plan_gang(view, gang, unit.pods, cache.host_ports_taken, cache.gpu,
                                                cache.rdma[0] if cache.rdma else "rdma")
            if plan is None or claims is None:
                break
            bad = self.dra.assign(claims, plan)
            if bad is None:
                break
            blocked.add(bad[0])  # this node cannot serve the claims as placed: plan again without it
            reasons[bad[1]] = reasons.get(bad[1], 0) + 1
            plan = None
        if affinity is not None and len(gang.members) > 1 and affinity.members_interact(unit.pods) and (
                plan is None or not affinity.consistent(unit.pods, plan)):
            # members must see each other: place them one by one, each against those before it
            view = ClusterView(cache.cluster)
            for index in by_nodes:
                view.block(index)
            plan, why_not = affinity.plan_in_turn(view, unit, gang, by_nodes, node_reasons)
            if plan is not None and claims is not None and (bad := self.dra.assign(claims, plan)) is not None:
                plan, why_not = None, bad[1]
        self.metrics.observe("decision", time.monotonic() - t0)
        if plan is None:
            rdma = cache.rdma[0] if cache.rdma else "rdma"
            if why_not is not None:
                message = why_not
            elif unit.gang:
                message = explain.gang_reason(view, gang, sorted(blocked), reasons, cache.gpu, rdma)
            else:
                message = explain.pod_reason(view, gang.members[0], sorted(blocked), reasons, cache.gpu, rdma)
            self.metrics.inc("unschedulable", kind="gang" if unit.gang else "pod")
            if self._try_reserve(unit, gang, own, now):
                assert self.reservation is not None
                message += (f"; holding {len(self.reservation.nodes)} nodes as they free up"
                            " (head of the queue)")
            self._fail(unit, "FailedScheduling", message, now)
            if unit.gang:
                first = self._gang_first_fail.setdefault(unit.key, now)
                if now - first >= unit.timeout_s:
                    self._gang_first_fail[unit.key] = now
                    self._fail(unit, "GangTimeout", f"{message}; gave up after {unit.timeout_s:.0f}s, "
                               "holding no devices, retrying", now)
            return []
        if claims is not None:
            self.dra.unmask(view)
        view.commit()
        if self.reservation is not None and self.reservation.key == unit.key:
            log.info("reservation used", extra={"unit": unit.key,
                                                 "waited_s": round(now - self.reservation.since, 3)})
            self.metrics.observe("reservation_wait", now - self.reservation.since)
            self._release_reservation()
        cache.assume(plan.allocations)
        if claims is not None:
            self.dra.assume(claims)
        if any(p.terms is not None and p.terms.anti for p in unit.pods):
            self._anti_held = True  # units after this one in the cycle must respect it
        if book is not None:
            book.start(unit.key)
        self._unit_fail.pop(unit.key, None)
        self._gang_first_fail.pop(unit.key, None)
        complete = self._gang_complete.pop(unit.key, None)
        if complete is not None:
            self.metrics.observe("gang_wait", time.monotonic() - complete)
        by_key = {p.key: p for p in unit.pods}
        out: list[Decision] = []
        for alloc in plan.allocations:
            node = cache.cluster.nodes[alloc.node].name
            ann = allocation.build(alloc, node, cache.topologies.get(node) if cache.cluster.nodes[alloc.node]
                                   .topology.n_gpus and node in cache.topologies else None, unit.gang)
            out.append(Decision(by_key[alloc.pod], node, ann.to_annotation(), time.monotonic()))
        return out

    def _affinity(self, unit: gangs.Unit) -> _Affinity | None:
        """Inter-pod affinity for this unit, or None when neither it nor any placed pod has terms."""
        cache = self.cache
        if not cache.with_terms:
            return None
        if not any(p.terms is not None for p in unit.pods):
            if self._anti_held is None:
                self._anti_held = cache.anti_holders()
            if not self._anti_held:
                return None
        return _Affinity(cache)

    # -- head-of-line reservation (reservation.py) ---------------------------------------------------
    def _check_reservation(self, units: list[gangs.Unit], now: float) -> None:
        """Drop the reservation when its holder is gone or held it too long (then it may not re-reserve
        for as long: a gang that never fits must not idle nodes forever)."""
        held = self.reservation
        if held is None:
            return
        if held.key not in {u.key for u in units}:
            self._release_reservation()
        elif now - held.since > self.hold_s:
            log.info("reservation expired", extra={"unit": held.key, "held_s": round(now - held.since, 1)})
            self._no_reserve[held.key] = now + self.hold_s
            self._release_reservation()

    def _release_reservation(self) -> None:
        """Its nodes are open again: units that failed only because of them retry now, not after
        their back-off (a release frees nothing in the ledger, so ``cache.freed`` does not say so)."""
        self.reservation = None
        self._unit_fail.clear()

    def _try_reserve(self, unit: gangs.Unit, gang: Gang, own: set[int], now: float) -> bool:
        """Make ``unit`` the holder if no unit ahead of it holds the reservation; True if it holds it."""
        held = self.reservation
        if not self.reserve or (held is not None and held.order <= unit.order):
            return held is not None and held.key == unit.key
        if self._no_reserve.get(unit.key, 0.0) > now:
            return False
        nodes = reservation.choose_nodes(self.cache.cluster, gang, own)
        if not nodes:
            return False
        if held is not None:
            self._release_reservation()  # a unit ahead of the holder takes it over
        self.reservation = reservation.Reservation(unit.key, unit.order, nodes, now)
        log.info("reserving", extra={"unit": unit.key, "nodes": sorted(nodes)})
        return True

    def _reclaim(self, unit: gangs.Unit, admission: quotas.Admission, book: quotas.QuotaBook) -> None:
        """Evict whole victim jobs (gangs) that borrow what ``unit``'s quota asks back."""
        for victim in admission.victims:
            message = (f"quota {admission.quota} reclaims what {victim} borrowed (for {unit.key});"
                       " the whole gang is evicted")
            pods = [self.cache.pods[k] for k in book.job_pods.get(victim, []) if k in self.cache.pods]
            log.info("reclaim", extra={"victim": victim, "pods": [p.key for p in pods], "for": unit.key,
                                       "quota": admission.quota})
            if not self.dry_run:
                self.evictor.evict_job(pods, message)

    def _fail(self, unit: gangs.Unit, reason: str, message: str, now: float, quiet: bool = False,
              delay: float | None = None) -> None:
        """Back off (1 s doubling to 10 s; ``delay`` overrides) and tell the pods why, unless ``quiet``."""
        previous = self._unit_fail.get(unit.key)
        if delay is None:
            delay = 1.0 if previous is None else min(max(previous[1] - now, 0) * 2 + 1, 10.0)
        self._unit_fail[unit.key] = (self.cache.freed, now + delay, len(unit.pods))
        if quiet:
            return
        log.info("unschedulable", extra={"unit": unit.key, "reason": reason, "why": message})
        if self.dry_run:
            return
        for pod in unit.pods:
            self.events.pod(pod, reason, message)
        if unit.gang and unit.pods[0].gang and unit.pods[0].gang.kind == "PodGroup":
            group = self.cache.podgroups.get(unit.key)
            if group is not None:
                meta = group["metadata"]
                self.events.on_object(meta["namespace"], "scheduling.x-k8s.io/v1alpha1", "PodGroup", meta["name"],
                                   meta.get("uid", ""), reason, message)

    def close(self) -> None:
        """Binds in flight finish; queued events and status writes are dropped (a new leader redoes
        what matters), so that exiting never waits on a slow API server for them."""
        self.binder.pool.shutdown(wait=True)
        self._claim_pool.shutdown(wait=True)
        self.binder.pool.shutdown(wait=True)
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- run ----------------------------------------------------------------------------------------------
    def _ready(self, seen: int) -> bool:
        return self.cache.generation != seen or self.stop.is_set()

    def run(self) -> None:
        seen = -1
        while not self.stop.is_set():
            with self.cache.lock:
                self.cache.changed.wait_for(functools.partial(self._ready, seen), timeout=1.0)
                seen = self.cache.generation
            if self.stop.is_set():
                return
            if self.is_leader():
                try:
                    self.cycle()
                except Exception:
                    log.exception("scheduling cycle failed")
                    time.sleep(1.0)


class _Affinity:
    """Inter-pod affinity of one unit against the pods that hold nodes (``interpod``)."""

    def __init__(self, cache: SchedulerCache) -> None:
        self.cache = cache
        self.existing = cache.placed()
        self.nodes = cache.node_labels()

    @staticmethod
    def incoming(pod: Any) -> interpod.Incoming:
        return interpod.Incoming(pod.namespace, pod.labels, pod.terms)

    def excluded(self, pod: Any, extra: list[interpod.Placed] | None = None,
                 skip: Container[int] = ()) -> tuple[set[int], dict[str, int]]:
        existing = self.existing + extra if extra else self.existing
        return interpod.excluded(self.incoming(pod), existing, self.nodes, self.cache.namespaces, skip)

    def members_interact(self, pods: list[Any]) -> bool:
        """Can one member's placement change where another may go? Only through members' own terms."""
        return any(p.terms is not None for p in pods)

    def consistent(self, pods: list[Any], plan: GangPlan) -> bool:
        """Would each member, in plan order, be allowed next to the members placed before it?"""
        by_key = {p.key: p for p in pods}
        before: list[interpod.Placed] = []
        for alloc in plan.allocations:
            pod = by_key[alloc.pod]
            if before and alloc.node in self.excluded(pod, before)[0]:
                return False
            before.append(interpod.Placed(pod.namespace, pod.labels, alloc.node, pod.terms))
        return True

    def plan_in_turn(self, view: ClusterView, unit: gangs.Unit, gang: Gang, by_nodes: set[int],
                     node_reasons: dict[str, int]) -> tuple[GangPlan | None, str | None]:
        """Members one at a time (rank order), each in a child view that also blocks what the members
        placed before it rule out; all or nothing: None and why when fewer than the gang needs fit.

        Where the first member has affinity terms and the greedy pass fails (its first member went to a
        domain too small for the rest), each domain of its first term's topologyKey is tried in turn
        (at most 64), the whole gang confined to it."""
        plan, why = self._in_turn(view, unit, gang, by_nodes, node_reasons)
        terms = unit.pods[0].terms
        if plan is not None or terms is None or not terms.affinity:
            return plan, why
        key = terms.affinity[0].key
        for value in sorted({labels[key] for labels in self.nodes if key in labels})[:64]:
            trial = view.child()
            for index, labels in enumerate(self.nodes):
                if labels.get(key) != value:
                    trial.block(index)
            found, _ = self._in_turn(trial, unit, gang, by_nodes, node_reasons)
            if found is not None:
                view.absorb(trial)
                return found, None
        return plan, why

    def _in_turn(self, view: ClusterView, unit: gangs.Unit, gang: Gang, by_nodes: set[int],
                 node_reasons: dict[str, int]) -> tuple[GangPlan | None, str | None]:
        """One greedy pass; ``view`` gets the members only when enough of them fit."""
        cache = self.cache
        work = view.child()
        placed: list[interpod.Placed] = []
        allocs: list[Allocation] = []
        first_out: tuple[Any, set[int], dict[str, int]] | None = None
        for pod, member in zip(unit.pods, gang.members, strict=True):
            trial = work.child()
            ruled_out, why = self.excluded(pod, placed, skip=by_nodes)
            for index in ruled_out:
                trial.block(index)
            one = plan_gang(trial, Gang(gang.name, (member,), 0, gang.priority))
            if one is None:
                if first_out is None:
                    first_out = (pod, ruled_out, why)
                continue
            work.absorb(trial)
            allocs += one.allocations
            placed.append(interpod.Placed(pod.namespace, pod.labels, one.allocations[0].node, pod.terms))
        if len(allocs) >= gang.need:
            view.absorb(work)
            first = allocs[0].node
            return GangPlan(gang.name, tuple(allocs), 0, cache.cluster.domains.domain_of(first, 0)), None
        assert first_out is not None
        pod, ruled_out, why = first_out
        blocked = sorted(by_nodes | ruled_out)
        rdma = cache.rdma[0] if cache.rdma else "rdma"
        reason = explain.pod_reason(work, pod.spec, blocked, {**node_reasons, **why}, cache.gpu, rdma)
        return None, f"gang {gang.name}: {len(allocs)} of {gang.need} members fit; member {pod.key}: {reason}"


def _pool(workers: int) -> Any:
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="events")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="railnet scheduler", description="schedule pods whose schedulerName is "
                                "railnet: joint GPU + RDMA NIC placement, gangs, leader election")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig file (default: $KUBECONFIG, else the in-cluster service account)")
    p.add_argument("--scheduler-name", default="railnet")
    p.add_argument("--identity", default=f"{socket.gethostname()}-{os.getpid()}")
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lease-namespace", default="kube-system")
    p.add_argument("--lease-name", default="railnet-scheduler")
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    p.add_argument("--gpu-resource", default="nvidia.com/gpu")
    p.add_argument("--rdma-resource", action="append", help="RDMA extended resource (repeatable; default rdma/roce)")
    p.add_argument("--domain-keys", default="railnet.io/leaf,railnet.io/spine,railnet.io/zone",
                   help="node label keys of the network domains, narrowest first")
    p.add_argument("--bind-workers", type=int, default=64, help="concurrent binds (measured: 64 ~2x 16)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0: off)")
    p.add_argument("--reservation", action=argparse.BooleanOptionalAction, default=True,
                   help="the head of the queue holds nodes as they free up (starvation-free; see reservation.py)")
    p.add_argument("--reservation-hold", type=float, default=reservation.DEFAULT_HOLD_S,
                   help="seconds a unit may hold a reservation without being placed")
    p.add_argument("--assume-ttl", type=float, default=30.0,
                   help="seconds after a successful bind that the watch must confirm it before the"
                   " assumed devices are released (0: never)")
    p.add_argument("--dry-run", action="store_true", help="print what would be bound (JSON lines) and exit")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level)
    api = KubeApi(endpoint_from_config(args.kubeconfig))
    cache = SchedulerCache(args.scheduler_name, args.gpu_resource, args.rdma_resource or ["rdma/roce"],
                           tuple(k for k in args.domain_keys.split(",") if k))
    metrics = Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    elector = LeaderElector(api, args.lease_namespace, args.lease_name, args.identity, args.lease_duration,
                            args.renew_deadline, args.retry_period)
    leading = elector.is_leader if args.leader_elect and not args.dry_run else (lambda: True)
    sched = Scheduler(api, cache, metrics, leading, args.bind_workers, dry_run=args.dry_run,
                      reserve=args.reservation, hold_s=args.reservation_hold, assume_ttl=args.assume_ttl)
    sched.start_caches()
    if not sched.wait_synced():
        log.error("caches did not sync")
        return 1
    if args.dry_run:
        for d in sched.cycle():
            print(json.dumps({"pod": d.pod.key, "node": d.node, "allocation": json.loads(d.annotation)}))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sched.stop.set())
    if args.leader_elect:
        def started() -> None:
            sched.resync_pods()
            metrics.set("leader", 1)
            with cache.lock:
                cache.generation += 1
                cache.changed.notify_all()

        def stopped() -> None:  # like kube-scheduler: a replica that lost the lease exits and restarts
            metrics.set("leader", 0)
            sched.stop.set()

        threading.Thread(target=elector.run, args=(sched.stop, started, stopped), daemon=True,
                         name="leader").start()
    log.info("scheduler started", extra={"identity": args.identity, "scheduler_name": args.scheduler_name})
    try:
        sched.run()
    except KeyboardInterrupt:
        sched.stop.set()
    sched.close()
    if args.leader_elect and elector.is_leader():
        elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
