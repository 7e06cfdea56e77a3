"""The node agent's Prometheus metrics (`railnet agent --metrics-port`).

- CNI calls: `railnet_cni_requests_total{plugin,command,code}` and the latency histogram
  `railnet_cni_request_duration_seconds{plugin,command,code}` (code 0 is success, else the CNI
  error code the runtime got), plus `railnet_cni_requests_in_flight`.
- IPAM, read from the state database at scrape time (so a scrape never disagrees with the store):
  `railnet_ipam_allocated_addresses{pool}`, `railnet_ipam_blocks{pool,state}` and
  `railnet_ipam_block_addresses{pool}` (addresses in this node's claimed blocks: usage is
  allocated / block addresses).
- DRA: `railnet_dra_prepared_claims` (claims the kubelet had this node's driver prepare).

The HTTP listener sets SO_REUSEPORT: during a rolling update the next agent binds the same host
port while this one still runs (hostNetwork), and the one that hands over closes its listener.
"""

from __future__ import annotations

import ipaddress
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

# CNI ADD on a warm agent takes milliseconds; a slow API server or a big prevResult, seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StateCollector(Collector):
    """Pool and block usage from the agent's SQLite file, read-only, one short query per scrape."""

    def __init__(self, db_path: Path, prepared_claims: Callable[[], int] | None = None) -> None:
        self.db_path = db_path
        self.prepared_claims = prepared_claims

    def _rows(self, query: str) -> list[tuple[object, ...]]:
        if not self.db_path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=2.0)
        try:
            return conn.execute(query).fetchall()
        except sqlite3.OperationalError:  # a table this agent never created (no cluster pools)
            return []
        finally:
            conn.close()

    def collect(self) -> Iterator[Metric]:
        allocated = GaugeMetricFamily("railnet_ipam_allocated_addresses",
                                      "Addresses allocated on this node, by pool", labels=["pool"])
        for pool, count in self._rows("SELECT pool, COUNT(*) FROM ipam_allocation GROUP BY pool"):
            allocated.add_metric([str(pool)], float(count))  # type: ignore[arg-type]
        yield allocated
        blocks = GaugeMetricFamily("railnet_ipam_blocks", "Cluster pool blocks this node holds, by state",
                                   labels=["pool", "state"])
        capacity = GaugeMetricFamily("railnet_ipam_block_addresses",
                                     "Addresses in the blocks this node has claimed, by pool", labels=["pool"])
        counts: dict[tuple[str, str], int] = {}
        sizes: dict[str, int] = {}
        for pool, cidr, state in self._rows("SELECT pool, cidr, state FROM cluster_block"):
            counts[(str(pool), str(state))] = counts.get((str(pool), str(state)), 0) + 1
            if state == "claimed":
                sizes[str(pool)] = sizes.get(str(pool), 0) + ipaddress.ip_network(str(cidr)).num_addresses
        for (pool, state), n in sorted(counts.items()):
            blocks.add_metric([pool, state], float(n))
        for pool, n in sorted(sizes.items()):
            capacity.add_metric([pool], float(n))
        yield blocks
        yield capacity
        if self.prepared_claims is not None:
            yield GaugeMetricFamily("railnet_dra_prepared_claims",
                                    "ResourceClaims prepared by this node's DRA driver", value=self.prepared_claims())


class AgentMetrics:
    """One registry per agent (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("railnet_cni_requests", "CNI calls served, by plugin, command and exit code",
                                ["plugin", "command", "code"], registry=self.registry)
        self.duration = Histogram("railnet_cni_request_duration_seconds", "Time to serve a CNI call",
                                  ["plugin", "command", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("railnet_cni_requests_in_flight", "CNI calls being served now",
                               registry=self.registry)

    def observe(self, plugin: str, command: str, code: int, seconds: float) -> None:
        # Label values come from the caller's request: keep them to known words (bounded cardinality).
        command = command if command in ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION") else "other"
        labels = (plugin if plugin.startswith("railnet") and len(plugin) <= 32 else "other", command, str(code))
        self.requests.labels(*labels).inc()
        self.duration.labels(*labels).observe(seconds)

    def watch_state(self, db_path: Path, prepared_claims: Callable[[], int] | None = None) -> None:
        self.registry.register(StateCollector(db_path, prepared_claims))


class _ReusePortServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class MetricsServer:
    """GET /metrics on (address, port) from a thread; `close` releases the port."""

    def __init__(self, registry: CollectorRegistry, port: int, address: str = "") -> None:
        self.httpd = _ReusePortServer((address, port), MetricsHandler.factory(registry))
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
