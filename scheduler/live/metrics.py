"""Prometheus metrics (prometheus-client) on an optional port; a no-op when the package is absent."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("railnet.scheduler.metrics")


class Metrics:
    def __init__(self) -> None:
        self.enabled = False
        try:
            import prometheus_client as prom
        except ImportError:
            return
        self.registry = prom.CollectorRegistry()
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.decision = prom.Histogram("railnet_scheduler_decision_seconds",
                                       "Time to plan one unit (pod or gang)", registry=self.registry,
                                       buckets=buckets)
        self.e2e = prom.Histogram("railnet_scheduler_scheduling_latency_seconds",
                                  "Pod creation to successful bind", registry=self.registry, buckets=buckets)
        self.bind = prom.Histogram("railnet_scheduler_bind_seconds", "Duration of one bind call",
                                   registry=self.registry, buckets=buckets)
        self.pending = prom.Gauge("railnet_scheduler_pending_pods", "Pods waiting to be scheduled (queue depth)",
                                  registry=self.registry)
        self.bound = prom.Counter("railnet_scheduler_binds_total", "Pods bound", registry=self.registry)
        self.bind_errors = prom.Counter("railnet_scheduler_bind_errors_total", "Failed binds", ["code"],
                                        registry=self.registry)
        self.unschedulable = prom.Counter("railnet_scheduler_unschedulable_total",
                                          "Units that did not fit in a cycle", ["kind"], registry=self.registry)
        self.evictions = prom.Counter("railnet_scheduler_quota_evictions_total",
                                      "Eviction requests for quota reclaim, by answer", ["result"],
                                      registry=self.registry)
        self.reservation_wait = prom.Histogram("railnet_scheduler_reservation_wait_seconds",
                                               "Head-of-line reservation taken -> its unit placed",
                                               registry=self.registry, buckets=buckets)
        self.gang_wait = prom.Histogram("railnet_scheduler_gang_wait_seconds",
                                        "A gang first seen with minMember pods -> planned (assumed)",
                                        registry=self.registry, buckets=buckets)
        self.gang_bind = prom.Histogram("railnet_scheduler_gang_bind_seconds",
                                        "A gang planned -> the last of its binds answered",
                                        registry=self.registry, buckets=buckets)
        self.leader = prom.Gauge("railnet_scheduler_leader", "1 while this replica holds the lease",
                                 registry=self.registry)
        self.enabled = True

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        if not self.enabled:
            log.warning("prometheus-client is not installed; no metrics endpoint")
            return
        import prometheus_client as prom

        prom.start_http_server(port, addr=addr, registry=self.registry)

    def observe(self, name: str, value: float) -> None:
        if self.enabled:
            getattr(self, name).observe(value)

    def inc(self, name: str, amount: float = 1, **labels: Any) -> None:
        if self.enabled:
            metric = getattr(self, name)
            (metric.labels(**labels) if labels else metric).inc(amount)

    def set(self, name: str, value: float) -> None:
        if self.enabled:
            getattr(self, name).set(value)
