"""Topology quality of device choices on the openb replay with HGX-like 8-GPU nodes.

    .venv/bin/python tests/bench/bench_topology_quality.py

Same replay as ``bench_trace_replay.py`` (FGD methodology, seeds 42..), with every 8-GPU node an
HGX-like box (GPU i and RDMA NIC i under PCIe switch i, switches 0-3 on socket 0, 4-7 on socket
1) and every whole-GPU pod on such a node asking one rail NIC per GPU. The node is always chosen
by railnet's policy; only the device choice on that node changes:

* ``railnet``: the joint GPU + NIC planner (``scheduler.intranode``);
* ``go-gpuallocator``: NVIDIA go-gpuallocator's best-effort policy (pairwise link scores, best
  partition), re-implemented in ``scheduler.devices``; NICs then nearest-free per GPU, in turn;
* ``first-fit``: lowest free GPUs, NICs nearest-free per GPU, in turn.

Three scenarios: rails only (a NIC is only ever taken together with its GPU, so "nearest free
NIC" is always the GPU's own); rails plus one RDMA NIC for every CPU-only pod placed on an HGX
node (data loaders / parameter servers with RDMA); rails plus one RDMA NIC for every GPU-share pod
(the NIC next to its GPU). The last two leave some GPUs without their own NIC.

Figures: share of multi-GPU pods whose GPU set has the best tier the node offered at that moment,
go-gpuallocator's own mean pair score per pod (higher is closer), share of GPUs whose rail NIC is
under the same PCIe switch, and the allocation % (unchanged by device choice up to tie effects).

Environment: ``RAILNET_OPENB_DIR``, ``RAILNET_BENCH_SEEDS`` (default 5 here: 18 replays per seed).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scheduler.devices import DeviceAllocator, FirstFitAllocator, GpuAllocatorBaseline, JointAllocator  # noqa: E402
from scheduler.policies import make_policy  # noqa: E402
from scheduler.replay import FIRST_SEED, ReplayResult, replay  # noqa: E402
from scheduler.trace import load_nodes, load_pods  # noqa: E402

OPENB = Path(os.environ.get("RAILNET_OPENB_DIR", REPO / ".." / "shared" / "traces" / "openb"))
SEEDS = int(os.environ.get("RAILNET_BENCH_SEEDS", "5"))
SCENARIOS = (
    ("rails only: NICs are taken with their GPUs", 0, 0),
    ("rails + one RDMA NIC per CPU-only pod", 1, 0),
    ("rails + one RDMA NIC per GPU-share pod", 0, 1),
)
ALLOCATORS: tuple[DeviceAllocator, ...] = (JointAllocator(), GpuAllocatorBaseline(), FirstFitAllocator())


def mean(values: list[float | int | None]) -> float:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else float("nan")


def run(
    trace: str, allocator: DeviceAllocator, cpu_nics: int, share_nics: int
) -> tuple[list[ReplayResult], float]:
    rows = load_nodes(OPENB / "openb_node_list_gpu_node.csv")
    pods = load_pods(OPENB / f"openb_pod_list_{trace}.csv")
    started = time.perf_counter()
    results = [
        replay(
            rows, pods, make_policy("railnet", pods, allocator, cpu_nics, share_nics), seed, topology="hgx"
        )
        for seed in range(FIRST_SEED, FIRST_SEED + SEEDS)
    ]
    return results, time.perf_counter() - started


def main() -> int:
    if not (OPENB / "openb_node_list_gpu_node.csv").exists():
        print(f"openb trace not found in {OPENB} (set RAILNET_OPENB_DIR)", file=sys.stderr)
        return 2
    print(
        f"Topology quality on the openb replay, HGX-like 8-GPU nodes, seeds {FIRST_SEED}..{FIRST_SEED + SEEDS - 1}"
    )
    for (scenario, cpu_nics, share_nics), trace in [
        (sc, t) for sc in SCENARIOS for t in ("default", "multigpu50")
    ]:
        print()
        print(f"trace {trace}, {scenario}")
        print()
        print(
            "| device choice | multi-GPU pods / seed | at best tier % | mean pair score | "
            "GPUs with same-switch NIC % | alloc % at 130 % | railnet best-tier / this | railnet same-switch / this | wall s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        rows = []
        for allocator in ALLOCATORS:
            results, seconds = run(trace, allocator, cpu_nics, share_nics)
            stats = [r.topology.as_dict() for r in results]
            rows.append(
                (
                    allocator.name,
                    mean([s["multi_gpu_pods"] for s in stats]),
                    mean([s["best_tier_pct"] for s in stats]),
                    mean([s["mean_pair_link_score"] for s in stats]),
                    mean([s["same_switch_nic_pct"] for s in stats]),
                    mean([r.allocation_at(130) for r in results]),
                    seconds,
                )
            )
        ours = rows[0]
        for name, pods, best, score, same, alloc, seconds in rows:
            best_ratio = ours[2] / best if best else float("inf")
            same_ratio = ours[4] / same if same else float("inf")
            print(
                f"| {name} | {pods:.0f} | {best:.1f} | {score:.1f} | {same:.1f} | {alloc:.2f} | "
                f"{best_ratio:.2f} | {same_ratio:.2f} | {seconds:.0f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
