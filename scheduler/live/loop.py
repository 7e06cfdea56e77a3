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
from collections.abc import Callable
from typing import Any

from scheduler.gang import Gang, plan_gang
from scheduler.live import allocation, explain, gangs, logs, quotas, reservation
from scheduler.live.binder import Binder, Decision, Events
from scheduler.live.cache import SchedulerCache
from scheduler.live.evictor import Evictor
from scheduler.live.kubeapi import KubeApi, endpoint_from_config
from scheduler.live.leader import LeaderElector
from scheduler.live.metrics import Metrics
from scheduler.live.podgroup_status import PODGROUPS, PodGroupStatusWriter
from scheduler.live.quota_status import QuotaStatusWriter
from scheduler.live.reflector import Reflector
from scheduler.live.status import StatusWriter
from scheduler.quota import Verdict
from scheduler.view import ClusterView

log = logging.getLogger("railnet.scheduler")
TOPOLOGIES = "/apis/railnet.io/v1alpha1/nodetopologies"
MAX_UNITS_PER_CYCLE = 2000  # let watch events in between long backlogs


class Scheduler:
    def __init__(self, api: KubeApi, cache: SchedulerCache, metrics: Metrics, is_leader: Callable[[], bool],
                 bind_workers: int = 64, dry_run: bool = False, reserve: bool = True,
                 hold_s: float = reservation.DEFAULT_HOLD_S, assume_ttl: float = 30.0) -> None:
        self.api, self.cache, self.metrics, self.is_leader, self.dry_run = api, cache, metrics, is_leader, dry_run
        self.reserve, self.hold_s, self.assume_ttl = reserve, hold_s, assume_ttl
        self.reservation: reservation.Reservation | None = None
        self._no_reserve: dict[str, float] = {}  # unit -> monotonic time before which it may not reserve
        self.binder = Binder(api, cache, metrics, Events(api, _pool(4), cache.scheduler_name), is_leader,
                             bind_workers)
        self.events = self.binder.events
        self.evictor = Evictor(api, self.events, _pool(4), metrics)
        self.quota_status = QuotaStatusWriter(api, self.events, _pool(2))
        self.podgroup_status = PodGroupStatusWriter(StatusWriter(api, _pool(2), PODGROUPS))
        self.stop = threading.Event()
        self.reflectors: list[Reflector] = []
        self._gang_first_fail: dict[str, float] = {}
        self._unit_fail: dict[str, tuple[int, float]] = {}  # unit -> (cache.freed at failure, retry at)

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
        ]
        for name, path, replace, on_event in specs:
            reflector = Reflector(self.api, path, replace, on_event, self.stop, name=name)
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
            for key in cache.expire_assumed(now, self.assume_ttl):
                log.warning("assumed pod expired", extra={"pod": key, "ttl_s": self.assume_ttl})
            if cache.dirty:
                cache.rebuild()
            if cache.podgroups and not self.dry_run:
                self.podgroup_status.sync(cache, now)
            holding = set(cache.cluster.allocations)
            units = gangs.collect(cache.pending(now), cache.pods, cache.podgroups, holding)
            self.metrics.set("pending", sum(len(u.pods) for u in units))
            book = quotas.build(cache, ((u.key, u.pods) for u in units if not u.problem)) if cache.quotas else None
            if book is not None and not self.dry_run:
                self.quota_status.sync(cache.quotas, book)
            self._check_reservation(units, now)
            done = 0
            for unit in units:
                if done >= MAX_UNITS_PER_CYCLE:
                    break
                failed = self._unit_fail.get(unit.key)
                if failed and failed[0] == cache.freed and failed[1] > now:
                    continue
                done += 1
                decisions += self._schedule(unit, now, book)
        if not self.dry_run:
            for decision in decisions:
                self.binder.submit(decision)
        return decisions

    def _schedule(self, unit: gangs.Unit, now: float, book: quotas.QuotaBook | None = None) -> list[Decision]:
        cache = self.cache
        if unit.problem:
            self._fail(unit, "FailedScheduling", unit.problem, now)
            return []
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
        own = set(blocked)  # what the unit's own constraints rule out
        held = self.reservation
        if held is not None and held.key != unit.key and unit.order > held.order:
            reserved = [i for i in reservation.indices(cache.cluster, held) if i not in own]
            if reserved:
                blocked.update(reserved)
                reasons[f"the reservation of {held.key}"] = len(reserved)
        for index in blocked:
            view.block(index)
        plan = plan_gang(view, gang)
        self.metrics.observe("decision", time.monotonic() - t0)
        if plan is None:
            rdma = cache.rdma[0] if cache.rdma else "rdma"
            if unit.gang:
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
        view.commit()
        if self.reservation is not None and self.reservation.key == unit.key:
            log.info("reservation used", extra={"unit": unit.key,
                                                 "waited_s": round(now - self.reservation.since, 3)})
            self.metrics.observe("reservation_wait", now - self.reservation.since)
            self._release_reservation()
        cache.assume(plan.allocations)
        if book is not None:
            book.start(unit.key)
        self._unit_fail.pop(unit.key, None)
        self._gang_first_fail.pop(unit.key, None)
        by_key = {p.key: p for p in unit.pods}
        out: list[Decision] = []
        for alloc in plan.allocations:
            node = cache.cluster.nodes[alloc.node].name
            ann = allocation.build(alloc, node, cache.topologies.get(node) if cache.cluster.nodes[alloc.node]
                                   .topology.n_gpus and node in cache.topologies else None, unit.gang)
            out.append(Decision(by_key[alloc.pod], node, ann.to_annotation(), time.monotonic()))
        return out

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

    def _fail(self, unit: gangs.Unit, reason: str, message: str, now: float) -> None:
        previous = self._unit_fail.get(unit.key)
        delay = 1.0 if previous is None else min(max(previous[1] - now, 0) * 2 + 1, 10.0)
        self._unit_fail[unit.key] = (self.cache.freed, now + delay)
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
    sched.binder.pool.shutdown(wait=True)
    if args.leader_elect and elector.is_leader():
        elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
