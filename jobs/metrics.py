"""Prometheus metrics of `railnet controller` (prometheus-client); a no-op when it is absent."""

from __future__ import annotations

from typing import Any


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
        self.enabled = True

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
