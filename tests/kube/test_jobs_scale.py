"""The issue's benchmark shape, railnet alone: 100 TFJobs x 8 replicas created at once on kwok nodes;
time until all 800 pods are Running, and the controller's memory. Prints the figures (run with -s).
Kubeflow's training operator is not run here (not built in this repository yet)."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

from railnet.dev.devcluster import DevCluster, NodeSet
from tests.kube import kubeutil
from tests.kube.test_jobs_support import Jobs, job_crds, jobs, replica, tfjob

__all__ = ["job_crds", "jobs"]  # fixtures
JOBS, REPLICAS = 100, 8


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_hundred_jobs_of_eight(jobs: Jobs, cluster: DevCluster) -> None:
    names = cluster.add_nodes(NodeSet(count=8, prefix=f"scale-{jobs.ns[-5:]}-", capacity={"pods": "200"}),
                              log=lambda _: None)
    try:
        ctl = jobs.start("--workers=8")
        jobs.metric(ctl, "railnet_jobs_leader")  # started and serving
        kubeutil.wait_for(lambda: jobs.metric(ctl, "railnet_jobs_leader") == 1 or None, 30, "leader")
        t0, cpu0 = time.monotonic(), _cpu_s(ctl.pid)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: jobs.create(tfjob(f"s{i:03d}", PS=replica("tensorflow", 1),
                                                      Worker=replica("tensorflow", REPLICAS - 1))), range(JOBS)))
        created = time.monotonic() - t0

        def counts() -> tuple[int, int]:
            items = jobs.api.get(f"/api/v1/namespaces/{jobs.ns}/pods")["items"]
            return len(items), sum((p.get("status") or {}).get("phase") == "Running" for p in items)

        t_all_created = None
        while time.monotonic() - t0 < 300:
            made, running = counts()
            if t_all_created is None and made == JOBS * REPLICAS:
                t_all_created = time.monotonic() - t0
            if running == JOBS * REPLICAS:
                break
            time.sleep(0.5)
        t_running = time.monotonic() - t0
        assert running == JOBS * REPLICAS, (made, running)
        rss, hwm, cpu = _kib(ctl.pid, "VmRSS"), _kib(ctl.pid, "VmHWM"), _cpu_s(ctl.pid) - cpu0
        pod_creates = jobs.metric(ctl, 'railnet_jobs_creates_total{kind="Pod"}')
        conflicts = jobs.metric(ctl, "railnet_jobs_create_conflicts_total")
        print(f"\njobs bench: {JOBS} jobs x {REPLICAS} replicas: job objects created in {created:.1f}s, "
              f"all pods created {t_all_created:.1f}s, all Running {t_running:.1f}s after the first create; "
              f"controller RSS {rss / 1024:.0f} MiB (peak {hwm / 1024:.0f} MiB), CPU {cpu:.1f}s; "
              f"pod creates {pod_creates:.0f}, 409s {conflicts:.0f}")
        assert conflicts == 0 and pod_creates == JOBS * REPLICAS
    finally:
        for name in names:
            jobs.api.request("DELETE", f"/api/v1/nodes/{name}")
