"""Scheduler scale: gang planning time and single-pod throughput on 1,000 and 5,000 8-GPU nodes.

    .venv/bin/python tests/bench/bench_scheduler_scale.py

Clusters are ``synthetic.fabric_cluster``: HGX-like nodes (8 GPUs, 8 RDMA NICs), 32 nodes per
leaf, 8 leaves per spine, 4 spines per zone. Measured, in this process:

* gang: plan one 1,024-GPU gang (128 pods x 8 GPUs + 8 rail NICs) on an empty cluster and on one
  already half full (random 1-8 GPU pods), cold (first call, empty memo tables) and warm;
* throughput: 10,000 single-pod jobs (1, 2, 4 or 8 GPUs with as many NICs) planned and committed
  one by one (a ``ClusterView`` transaction each); when a job does not fit, the oldest running
  job ends first (FIFO churn), so the 1,000-node cluster runs full instead of rejecting.

Peer, measured in the same run: a per-pod full scan in the style of kube-scheduler (filter every
node, score every feasible node by best fit, take the best; devices first-fit), the same work
without railnet's indexes or memo tables. Targets: gang plan < 1 s at 5,000 nodes, >= 1,000 pods/s.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scheduler.gang import Gang, plan_gang  # noqa: E402
from scheduler.intranode import _plan_cached  # noqa: E402
from scheduler.model import Allocation, Cluster, PodSpec  # noqa: E402
from scheduler.synthetic import fabric_cluster  # noqa: E402
from scheduler.view import ClusterView  # noqa: E402

SIZES = tuple(int(s) for s in os.environ.get("RAILNET_BENCH_NODES", "1000,5000").split(","))
JOBS = int(os.environ.get("RAILNET_BENCH_JOBS", "10000"))
GANG_PODS = 128


def worker(name: str, gpus: int) -> PodSpec:
    return PodSpec(
        name, cpu_milli=gpus * 8000, memory_mib=gpus * 65536, num_gpu=gpus, gpu_milli=1000, rdma_nics=gpus
    )


def half_fill(cluster: Cluster, rng: random.Random) -> None:
    """Random 1-8 GPU pods until about half the GPUs are taken."""
    target = cluster.gpu_capacity_milli // 2
    n = 0
    while cluster.gpu_allocated_milli < target:
        view = ClusterView(cluster)
        plan = plan_gang(view, Gang(f"fill-{n}", (worker(f"fill-{n}", rng.choice((1, 2, 4, 8))),)))
        if plan is None:
            break
        view.commit()
        n += 1


def time_gang(cluster: Cluster) -> tuple[float, int]:
    gang = Gang("big", tuple(worker(f"rank-{r}", 8) for r in range(GANG_PODS)))
    started = time.perf_counter()
    plan = plan_gang(ClusterView(cluster), gang)
    elapsed = time.perf_counter() - started
    if plan is None:
        raise SystemExit("the 1,024-GPU gang did not fit")
    return elapsed, plan.level


def naive_place(cluster: Cluster, pod: PodSpec) -> Allocation | None:
    """The peer: filter and score every node for every pod (best fit by free GPUs)."""
    best: tuple[int, int] | None = None
    for node in cluster.nodes:
        if not node.fits_host(pod):
            continue
        score = node.whole_free.bit_count() - pod.whole_gpus
        if best is None or score < best[0]:
            best = (score, node.index)
    if best is None:
        return None
    node = cluster.nodes[best[1]]
    gpus = [i for i in range(node.gpu_count) if node.whole_free >> i & 1][: pod.whole_gpus]
    nics = [k for k in range(node.nic_count) if node.nic_free >> k & 1][: pod.rdma_nics]
    return Allocation(pod.name, node.index, pod.cpu_milli, pod.memory_mib, tuple(gpus), 1000, tuple(nics))


def naive_gang(cluster: Cluster) -> float:
    started = time.perf_counter()
    placed = []
    for r in range(GANG_PODS):
        alloc = naive_place(cluster, worker(f"naive-{r}", 8))
        assert alloc is not None
        cluster.apply(alloc)
        placed.append(alloc.pod)
    elapsed = time.perf_counter() - started
    for pod in placed:
        cluster.release(pod)
    return elapsed


def job_shapes(rng: random.Random) -> list[int]:
    return [rng.choice((1, 1, 1, 2, 2, 4, 8)) for _ in range(JOBS)]


def throughput(nodes: int, shapes: list[int]) -> tuple[float, int]:
    """Jobs planned and committed one by one; when one does not fit, the oldest job ends (churn)."""
    cluster = fabric_cluster(nodes)
    running: deque[str] = deque()
    started = time.perf_counter()
    for n, gpus in enumerate(shapes):
        gang = Gang(f"job-{n}", (worker(f"job-{n}", gpus),))
        while True:
            view = ClusterView(cluster)
            if plan_gang(view, gang) is not None:
                view.commit()
                running.append(gang.members[0].name)
                break
            cluster.release(running.popleft())
    return len(shapes) / (time.perf_counter() - started), len(running)


def naive_throughput(nodes: int, shapes: list[int]) -> float:
    cluster = fabric_cluster(nodes)
    running: deque[str] = deque()
    started = time.perf_counter()
    for n, gpus in enumerate(shapes):
        pod = worker(f"job-{n}", gpus)
        while True:
            alloc = naive_place(cluster, pod)
            if alloc is not None:
                cluster.apply(alloc)
                running.append(pod.name)
                break
            cluster.release(running.popleft())
    return len(shapes) / (time.perf_counter() - started)


def main() -> int:
    rng = random.Random(7)
    shapes = job_shapes(rng)
    print(f"Scheduler scale (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print()
    print(
        "| nodes | GPUs | gang 128x8 empty, cold | warm (median of 5) | half-full cluster | domain level | peer (per-pod full scan) | peer / railnet |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for nodes in SIZES:
        _plan_cached.cache_clear()
        cluster = fabric_cluster(nodes)
        cold, level = time_gang(cluster)
        warm = statistics.median(time_gang(cluster)[0] for _ in range(5))
        busy = fabric_cluster(nodes)
        half_fill(busy, random.Random(nodes))
        busy_time, busy_level = time_gang(busy)
        peer = naive_gang(fabric_cluster(nodes))
        print(
            f"| {nodes:,} | {nodes * 8:,} | {cold * 1000:.1f} ms | {warm * 1000:.1f} ms | "
            f"{busy_time * 1000:.1f} ms (level {busy_level}) | {level} | {peer * 1000:.1f} ms | {peer / warm:.1f}x |"
        )
    print()
    print("| nodes | single-pod jobs | running at the end | railnet pods/s | peer pods/s | railnet / peer |")
    print("|---|---|---|---|---|---|")
    for nodes in SIZES:
        rate, running = throughput(nodes, shapes)
        peer = naive_throughput(nodes, shapes)
        print(
            f"| {nodes:,} | {len(shapes):,} | {running:,} | {rate:,.0f} | {peer:,.0f} | {rate / peer:.1f}x |"
        )
    print()
    print("Targets: gang plan < 1 s at 5,000 nodes; >= 1,000 pods/s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
