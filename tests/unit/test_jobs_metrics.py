"""`railnet_jobs{group,kind,phase}`: counted from the controller's cache at scrape time."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from jobs.metrics import Metrics, phase


def job(kind: str, *true: str, group: str = "kubeflow.org") -> dict[str, Any]:
    conds = [{"type": t, "status": "True"} for t in true] + [{"type": "Running", "status": "False"}]
    return {"apiVersion": f"{group}/v1", "kind": kind, "status": {"conditions": conds}}


def sample(metrics: Metrics, kind: str, ph: str, group: str = "kubeflow.org") -> float | None:
    text = generate_latest(metrics.registry).decode()
    for line in text.splitlines():
        if line.startswith("railnet_jobs{") and f'kind="{kind}"' in line and f'phase="{ph}"' in line \
                and f'group="{group}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_phase_is_the_first_true_condition_in_order() -> None:
    assert phase({}) == "Pending"
    assert phase(job("TFJob", "Created")) == "Created"
    assert phase(job("TFJob", "Created", "Running")) == "Running"
    assert phase(job("TFJob", "Created", "Running", "Succeeded")) == "Succeeded"
    assert phase(job("TFJob", "Created", "Queuing")) == "Queuing"
    assert phase(job("TFJob", "Failed", "Suspended")) == "Failed"


def test_series_follow_the_cache_at_each_scrape() -> None:
    metrics = Metrics()
    jobs = [job("TFJob", "Created", "Running"), job("TFJob", "Created", "Running"),
            job("PyTorchJob", "Created", group="training.kubedl.io")]
    metrics.watch_jobs(lambda: list(jobs))
    assert sample(metrics, "TFJob", "Running") == 2
    assert sample(metrics, "PyTorchJob", "Created", "training.kubedl.io") == 1
    jobs[0] = job("TFJob", "Created", "Succeeded")
    assert sample(metrics, "TFJob", "Running") == 1
    assert sample(metrics, "TFJob", "Succeeded") == 1
    jobs[1] = job("TFJob", "Created", "Succeeded")
    assert sample(metrics, "TFJob", "Running") == 0  # a phase that empties reads 0, not gone
    jobs.clear()
    assert sample(metrics, "TFJob", "Running") is None
