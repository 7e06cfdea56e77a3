"""Scheduler scale: gang planning time and single-pod throughput on 1,000 and 5,000 8-GPU nodes.

    .venv/bin/python tests/bench/bench_scheduler_scale.py

Clusters are ``synthetic.fabric_cluster``: HGX-like nodes (8 GPUs, 8 RDMA NICs), 32 nodes per
leaf, 8 leaves per spine, 4 spines per zone. Measured, in this process:

* gang: plan *and commit* one 1,024-GPU gang (128 pods x 8 GPUs + 8 rail NICs) on an empty
  cluster, cold (every memo table emptied first), compared with the peer doing the same (its
  placements applied to the cluster); then, for information only, railnet warm (median of 5,
  memo tables kept) and cold on a cluster already half full (random 1-8 GPU pods on random nodes);
* throughput: 3,000 single-pod jobs (``RAILNET_BENCH_JOBS``) (1, 2, 4 or 8 GPUs with as many NICs) planned and committed
  one by one (railnet: a ``ClusterView`` transaction each, placed by the cluster's live railnet
  policy through ``policies.decide``, one candidate per distinct node state: ``Cluster.states``);
  when a job does not fit, the oldest running job ends first (FIFO churn), so the 1,000-node
  cluster runs full instead of rejecting. Both start cold: a new cluster (so a new state index,
  live policy and score cache, all built inside the timed loop) and empty memo tables.

Options (environment): ``RAILNET_BENCH_NODES`` (default ``1000,5000``), ``RAILNET_BENCH_JOBS``.

Peer, measured in the same run: a naive per-pod full scan written in Python here (filter every
node, best fit by free GPUs, lowest free GPUs and NICs): no index, no memo table, no topology.
It is not kube-scheduler or any other scheduler. Targets: gang plan < 1 s at 5,000 nodes,
>= 1,000 pods/s.
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

from scheduler.device_fragmentation import device_fragmentation  # noqa: E402
from scheduler.gang import Gang, _slots, plan_gang  # noqa: E402
from scheduler.intranode import _plan_cached  # noqa: E402
from scheduler.model import Allocation, Cluster, PodSpec  # noqa: E402
from scheduler.placement import place_on_node  # noqa: E402
from scheduler.synthetic import fabric_cluster  # noqa: E402
from scheduler.view import ClusterView  # noqa: E402

SIZES = tuple(int(s) for s in os.environ.get("RAILNET_BENCH_NODES", "1000,5000").split(","))
JOBS = int(os.environ.get("RAILNET_BENCH_JOBS", "3000"))
GANG_PODS = 128


def worker(name: str, gpus: int) -> PodSpec:
    return PodSpec(
        name, cpu_milli=gpus * 8000, memory_mib=gpus * 65536, num_gpu=gpus, gpu_milli=1000, rdma_nics=gpus
    )


def half_fill(cluster: Cluster, rng: random.Random) -> None:
    """Random 1-8 GPU pods on random nodes until about half the GPUs are taken (setup, not timed)."""
    target = cluster.gpu_capacity_milli // 2
    n = 0
    while cluster.gpu_allocated_milli < target:
        pod = worker(f"fill-{n}", rng.choice((1, 2, 4, 8)))
        alloc = place_on_node(cluster.nodes[rng.randrange(len(cluster.nodes))], pod)
        if alloc is not None:
            cluster.apply(alloc)
        n += 1


PEER = "naive per-pod full scan (Python, no index)"


def cold() -> None:
    """Empty every memo table railnet's planning uses."""
    for cache in (_plan_cached, _slots, device_fragmentation):
        cache.cache_clear()


def time_gang(cluster: Cluster) -> tuple[float, int]:
    """Plan and commit the gang; release it again so the cluster is unchanged."""
    gang = Gang("big", tuple(worker(f"rank-{r}", 8) for r in range(GANG_PODS)))
    started = time.perf_counter()
    view = ClusterView(cluster)
    plan = plan_gang(view, gang)
    if plan is None:
        raise SystemExit("the 1,024-GPU gang did not fit")
    view.commit()
    elapsed = time.perf_counter() - started
    for alloc in plan.allocations:
        cluster.release(alloc.pod)
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
    print(f"peer: {PEER}, written in this script; not kube-scheduler")
    print()
    print(
        f"| nodes | GPUs | railnet gang 128x8 plan+commit, cold | peer plan+commit, cold ({PEER}) | "
        "peer / railnet (cold / cold) | domain level | railnet warm (median of 5) | railnet half-full, cold |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for nodes in SIZES:
        cluster = fabric_cluster(nodes)
        cold()
        cold_time, level = time_gang(cluster)
        peer = naive_gang(fabric_cluster(nodes))
        warm = statistics.median(time_gang(cluster)[0] for _ in range(5))
        busy = fabric_cluster(nodes)
        half_fill(busy, random.Random(nodes))
        cold()
        busy_time, busy_level = time_gang(busy)
        print(
            f"| {nodes:,} | {nodes * 8:,} | {cold_time * 1000:.1f} ms | {peer * 1000:.1f} ms | "
            f"{peer / cold_time:.1f}x | {level} | {warm * 1000:.1f} ms | {busy_time * 1000:.1f} ms (level {busy_level}) |"
        )
    print()
    print(
        "| nodes | single-pod jobs | running at the end | railnet pods/s (railnet policy, cold start) | "
        "peer pods/s | railnet / peer |"
    )
    print("|---|---|---|---|---|---|")
    for nodes in SIZES:
        cold()
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
