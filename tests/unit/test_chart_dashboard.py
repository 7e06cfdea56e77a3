"""Every series the Grafana dashboard (deploy/helm/railnet/dashboards/railnet.json) queries is one a
component really exports: the names come from the components' own registries, not from a list here."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from jobs.metrics import Metrics as JobMetrics
from netmanager.metrics import AgentMetrics
from railnet.dev import chart
from scheduler.live.metrics import Metrics as SchedulerMetrics

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "summary": ("_sum", "_count", "")}


def exported(registry: CollectorRegistry) -> set[str]:
    """Sample names as /metrics shows them (a counter's _total, a histogram's _bucket/_sum/_count)."""
    return {family.name + s for family in registry.collect() for s in SUFFIXES.get(family.type, ("",))}


def all_exported(tmp: Path) -> dict[str, set[str]]:
    agent = AgentMetrics()
    agent.watch_state(tmp / "absent.db", prepared_claims=lambda: 0)
    return {"agent": exported(agent.registry), "controller": exported(JobMetrics().registry),
            "scheduler": exported(SchedulerMetrics().registry)}


def dashboard_series() -> set[str]:
    dash = json.loads((chart.CHART / "dashboards" / "railnet.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    return {m for e in exprs for m in re.findall(r"\brailnet_[a-z0-9_]+", e)}


def test_dashboard_queries_only_exported_metrics(tmp_path: Path) -> None:
    known = set().union(*all_exported(tmp_path).values())
    unknown = sorted(dashboard_series() - known)
    assert not unknown, f"the dashboard queries series no component exports: {unknown}"


def test_dashboard_covers_every_component(tmp_path: Path) -> None:
    used = dashboard_series()
    for component, names in all_exported(tmp_path).items():
        assert used & names, f"no panel shows a metric of the {component}"
    for family in ("railnet_cni_requests_total", "railnet_cni_request_duration_seconds_bucket",
                   "railnet_ipam_allocated_addresses", "railnet_dra_prepared_claims",
                   "railnet_scheduler_pending_pods", "railnet_scheduler_gang_wait_seconds_bucket",
                   "railnet_jobs_queue_depth"):
        assert family in used, family


def test_dashboard_is_valid_grafana_json() -> None:
    dash = json.loads((chart.CHART / "dashboards" / "railnet.json").read_text())
    assert dash["uid"] and dash["title"] == "railnet"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
