"""Prometheus metrics of `railnet controller` (prometheus-client); a no-op when it is absent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from jobs import status as job_status

JSON = dict[str, Any]
# A job's phase for the `railnet_jobs` gauge: the first of these conditions that is True, else Pending.
PHASES = ("Succeeded", "Failed", "Suspended", "Queuing", "Restarting", "Running", "Created")


def phase(job: JSON) -> str:
    status = job.get("status") or {}
    return next((p for p in PHASES if job_status.is_true(status, p)), "Pending")


def count_phases(jobs: Iterable[JSON]) -> Counter[tuple[str, str, str]]:
    """(group, kind, phase) -> jobs; every phase of every kind seen is present, so a phase that empties reads 0."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for job in jobs:
        group, kind = str(job.get("apiVersion", "")).split("/")[0], str(job.get("kind", ""))
        counts[(group, kind, phase(job))] += 1
    for group, kind in {(g, k) for g, k, _ in counts}:
        for p in (*PHASES, "Pending"):
            counts.setdefault((group, kind, p), 0)
    return counts


class Metrics:
    def __init__(self) -> None:
        self.enabled = False
        try:
            import prometheus_client as prom
        except ImportError:
            return
        r = self.registry = prom.CollectorRegistry()
        self.reconcile = prom.Histogram("railnet_jobs_reconcile_seconds", "Duration of one job reconcile",
                                        registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
        self.reconciles = prom.Counter("railnet_jobs_reconciles_total", "Job reconciles by result", ["result"],
                                       registry=r)
        self.creates = prom.Counter("railnet_jobs_creates_total", "Objects created (HTTP 201)", ["kind"],
                                    registry=r)
        self.conflicts = prom.Counter("railnet_jobs_create_conflicts_total",
                                      "Creates answered 409 AlreadyExists (a create the cache should have "
                                      "prevented)", ["kind"], registry=r)
        self.deletes = prom.Counter("railnet_jobs_deletes_total", "Objects deleted", ["kind"], registry=r)
        self.failovers = prom.Counter("railnet_jobs_failovers_total", "Replica pods recreated after a failure",
                                      registry=r)
        self.skipped = prom.Counter("railnet_jobs_expectations_waits_total",
                                    "Reconciles skipped because the watch has not shown our own writes yet",
                                    registry=r)
        self.stale = prom.Counter("railnet_jobs_stale_patches_total",
                                  "Job or job status patches refused (409) because the cached job was older than the server's; "
                                  "the watch event redoes the pass", registry=r)
        self.depth = prom.Gauge("railnet_jobs_queue_depth", "Job keys waiting in the work queue", registry=r)
        self.leader = prom.Gauge("railnet_jobs_leader", "1 while this replica holds the lease", registry=r)
        self._jobs: Callable[[], list[JSON]] = list
        r.register(_Phases(lambda: self._jobs()))
        self.enabled = True

    def watch_jobs(self, jobs: Callable[[], list[JSON]]) -> None:
        """Count `railnet_jobs{group,kind,phase}` from this source (the controller's job cache) at each scrape."""
        self._jobs = jobs

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        if self.enabled:
            import prometheus_client as prom

            prom.start_http_server(port, addr=addr, registry=self.registry)

    def inc(self, name: str, amount: float = 1, **labels: Any) -> None:
        if self.enabled:
            metric = getattr(self, name)
            (metric.labels(**labels) if labels else metric).inc(amount)

    def observe(self, name: str, value: float) -> None:
        if self.enabled:
            getattr(self, name).observe(value)

    def set(self, name: str, value: float) -> None:
        if self.enabled:
            getattr(self, name).set(value)


class _Phases:
    """A scrape-time collector: job phases are read from the cache, not kept up to date on every event."""

    def __init__(self, jobs: Callable[[], list[JSON]]) -> None:
        self.jobs = jobs

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("railnet_jobs", "Jobs in the controller's cache by phase (the first True "
                                   "condition of " + ", ".join(PHASES) + "; else Pending)",
                                   labels=["group", "kind", "phase"])
        for (group, kind, p), n in sorted(count_phases(self.jobs()).items()):
            family.add_metric([group, kind, p], n)
        yield family
