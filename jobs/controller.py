"""`railnet controller`: the training-job operator process.

Reflectors (scheduler/live/reflector.py) keep caches of the four job resources, all pods and the
Services this controller made; their handlers enqueue job keys in a de-duplicating, rate-limited
queue; ``--workers`` threads reconcile keys while this replica holds the Lease (scheduler/live/
leader.py). A replica that loses the lease exits (its restart rejoins as a standby), as
kube-controller-manager does. On winning, it relists pods and Services first, so it acts on what
the previous leader wrote, not on its own older view.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from jobs import admission, api, ports, rails
from jobs.expectations import Expectations
from jobs.metrics import Metrics
from jobs.reconciler import Options, Reconciler
from jobs.store import Store
from jobs.workqueue import WorkQueue
from scheduler.live import logs, quotas
from scheduler.live.binder import Events
from scheduler.live.kubeapi import KubeApi, endpoint_from_config
from scheduler.live.leader import LeaderElector
from scheduler.live.reflector import Reflector

log = logging.getLogger("railnet.jobs")
SERVICES = f"/api/v1/services?labelSelector={api.CONTROLLER_LABEL.replace('/', '%2F')}%3D{api.CONTROLLER_VALUE}"
JOB_RESOURCES = [(group, fw) for group in (api.KUBEDL, api.KUBEFLOW) for fw in api.FRAMEWORKS.values()]


class Controller:
    def __init__(self, kube: KubeApi, options: Options, metrics: Metrics, is_leader: Callable[[], bool],
                 workers: int = 8, watch_delay: float = 0.0, expectations_ttl: float = 300.0,
                 queue_admission: bool = False) -> None:
        self.kube, self.metrics, self.is_leader, self.workers = kube, metrics, is_leader, workers
        self.queue = WorkQueue()
        self.expectations = Expectations(expectations_ttl)
        self.store = Store(self.queue.add, self.expectations)
        metrics.watch_jobs(self._jobs)
        self.events = Events(kube, concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="events"),
                             socket.gethostname(), component="railnet-controller")
        self.admission = admission.Admission(self._jobs, self.queue.add, rdma=options.rail_resources) \
            if queue_admission else None
        self.reconciler = Reconciler(kube, self.store, self.expectations, self.events, metrics, options,
                                     self.queue.add_after, self.admission)
        self.stop = threading.Event()
        self.reflectors: list[Reflector] = []
        self.watch_delay = watch_delay

    def _jobs(self) -> list[Any]:
        with self.store.lock:
            return list(self.store.jobs.values())

    def _delayed(self, handler: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
        """Tests: deliver watch events late (what a slow or lagging watch looks like)."""
        if not self.watch_delay:
            return handler

        def late(event: str, obj: Any) -> None:
            time.sleep(self.watch_delay)
            handler(event, obj)

        return late

    def start_caches(self) -> None:
        s = self.store
        specs: list[tuple[str, str, Callable[[list[Any]], None], Callable[[str, Any], None]]] = []
        for group, fw in JOB_RESOURCES:
            kind_group = f"{fw.kind}.{group}"
            specs.append((kind_group, api.resource_path(group, fw.plural),
                          functools.partial(s.replace_jobs, kind_group), s.on_job))
        specs.append(("pods", "/api/v1/pods", s.replace_pods, self._delayed(s.on_pod)))
        specs.append(("services", SERVICES, s.replace_services, self._delayed(s.on_service)))
        queue = self.admission
        if queue is None:
            specs.append(("nodes", "/api/v1/nodes", s.replace_nodes, s.on_node))
        else:
            specs.append(("nodes", "/api/v1/nodes", _both(s.replace_nodes, queue.replace_nodes),
                          _both(s.on_node, queue.on_node)))
            specs.append(("elasticquotas", quotas.ELASTIC_QUOTAS, queue.replace_quotas, queue.on_quota))
            specs.append(("priorityclasses", admission.PRIORITY_CLASSES, queue.replace_priorities, queue.on_priority))
        for name, path, replace, on_event in specs:
            # without the right to list PriorityClasses every job has priority 0 (order is then FIFO)
            reflector = Reflector(self.kube, path, replace, on_event, self.stop, name=name,
                                  optional=name == "priorityclasses")
            reflector.start()
            self.reflectors.append(reflector)

    def wait_synced(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        return all(r.synced.wait(max(deadline - time.monotonic(), 0)) for r in self.reflectors)

    def resync(self) -> None:
        for r in self.reflectors:
            if r.name in ("reflector-pods", "reflector-services"):
                r.relist()

    def worker(self) -> None:
        while not self.stop.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            self.metrics.set("depth", len(self.queue))
            try:
                if not self.is_leader():
                    self.queue.add_after(key, 1.0)  # a standby keeps the key until it leads
                    continue
                started = time.perf_counter()
                self.reconciler.reconcile(key)
                self.metrics.observe("reconcile", time.perf_counter() - started)
                self.metrics.inc("reconciles", result="ok")
                self.queue.forget(key)
            except Exception as exc:
                delay = self.queue.retry(key)
                self.metrics.inc("reconciles", result="error")
                log.warning("reconcile failed", extra={"job": key, "error": repr(exc), "retry_s": round(delay, 3)})
            finally:
                self.queue.done(key)

    def run(self) -> None:
        threads = [threading.Thread(target=self.worker, daemon=True, name=f"worker-{i}") for i in range(self.workers)]
        for t in threads:
            t.start()
        self.stop.wait()
        self.queue.shutdown()
        for t in threads:
            t.join(5)


def _both(first: Callable[..., None], second: Callable[..., None]) -> Callable[..., None]:
    def call(*args: Any) -> None:
        first(*args)
        second(*args)

    return call


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="railnet controller", description="reconcile TFJobs and PyTorchJobs "
                                "(training.kubedl.io and kubeflow.org) into pods, Services and PodGroups")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig file (default: $KUBECONFIG, else the in-cluster service account)")
    p.add_argument("--identity", default=f"{socket.gethostname()}-{os.getpid()}")
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lease-namespace", default="kube-system")
    p.add_argument("--lease-name", default="railnet-controller")
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=8, help="jobs reconciled concurrently")
    p.add_argument("--create-parallelism", type=int, default=16,
                   help="pod/Service creates in flight at once (a job's replicas are created concurrently)")
    p.add_argument("--hostnetwork-port-range", default="20000-30000",
                   help="host ports for kubedl.io/network-mode: host replicas (KubeDL's flag and default)")
    p.add_argument("--gang-scheduling", action=argparse.BooleanOptionalAction, default=False,
                   help="make a PodGroup per job and set schedulerName on its pods (per job: annotation "
                   f"{api.GANG_ANNOTATION})")
    p.add_argument("--gang-scheduler-name", default="railnet")
    p.add_argument("--rail-networks", default="",
                   help="NetworkAttachmentDefinitions (rail: auto) for replica pods that request a rail resource, "
                   f"as Multus's text form, e.g. 'rail' (per job: annotation {rails.RAIL_NETWORKS}; default: none)")
    p.add_argument("--rail-resource", action="append", default=None,
                   help="the rail NIC resource (repeatable; default rdma/roce, as railnet scheduler's --rdma-resource)")
    p.add_argument("--admission", choices=("none", "quota"), default="none",
                   help="quota: hold jobs that an ElasticQuota governs suspended until it admits them "
                   "(priority, then FIFO, per quota); see docs/jobs.md")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0: off)")
    p.add_argument("--metrics-addr", default="0.0.0.0")
    p.add_argument("--log-level", default="info")
    p.add_argument("--debug-watch-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--debug-create-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--debug-expectations-ttl", type=float, default=300.0, help=argparse.SUPPRESS)  # 0: off
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level)
    try:
        span = ports.PortRange.parse(args.hostnetwork_port_range)
    except ValueError as exc:
        print(f"railnet controller: --hostnetwork-port-range: {exc}", file=sys.stderr)
        return 2
    try:
        rail_networks = rails.parse_networks(args.rail_networks)
    except ValueError as exc:
        print(f"railnet controller: --rail-networks: {exc}", file=sys.stderr)
        return 2
    kube = KubeApi(endpoint_from_config(args.kubeconfig), user_agent="railnet-controller")
    metrics = Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_addr)
    elector = LeaderElector(kube, args.lease_namespace, args.lease_name, args.identity, args.lease_duration,
                            args.renew_deadline, args.retry_period)
    options = Options(port_range=span, gang_default=args.gang_scheduling, gang_scheduler=args.gang_scheduler_name,
                      create_delay=args.debug_create_delay, create_parallelism=max(1, args.create_parallelism),
                      rail_networks=rail_networks,
                      rail_resources=tuple(args.rail_resource or rails.RAIL_RESOURCES))
    ctl = Controller(kube, options, metrics, elector.is_leader if args.leader_elect else (lambda: True),
                     args.workers, args.debug_watch_delay, args.debug_expectations_ttl,
                     queue_admission=args.admission == "quota")
    ctl.start_caches()
    if not ctl.wait_synced():
        log.error("caches did not sync")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: ctl.stop.set())
    if args.leader_elect:
        def started() -> None:
            ctl.resync()
            metrics.set("leader", 1)
            for key in list(ctl.store.jobs):
                ctl.queue.add(key)

        def stopped() -> None:
            metrics.set("leader", 0)
            ctl.stop.set()

        threading.Thread(target=elector.run, args=(ctl.stop, started, stopped), daemon=True, name="leader").start()
    else:
        metrics.set("leader", 1)
    log.info("controller started", extra={"identity": args.identity, "port_range": str(span)})
    try:
        ctl.run()
    except KeyboardInterrupt:
        ctl.stop.set()
    if args.leader_elect and elector.is_leader():
        elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
