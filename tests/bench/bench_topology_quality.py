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

Each allocator also chooses the NICs of GPU-share pods its own way (``policies.share_nics``):
railnet's joint planner keeps the rails of free GPUs intact, the baselines take the nearest free
NIC, as they do for whole GPUs.

Options: ``--openb-dir DIR`` (or ``RAILNET_OPENB_DIR``; without it a generated trace in the openb
format is replayed, and the script says so), ``--seeds N`` (default 1: 18 replays per seed; the
report uses 5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from openb import HOW_TO_GET, TRACES, TraceSource, add_option, resolve  # noqa: E402

from scheduler.devices import DeviceAllocator, FirstFitAllocator, GpuAllocatorBaseline, JointAllocator  # noqa: E402
from scheduler.policies import make_policy  # noqa: E402
from scheduler.replay import FIRST_SEED, ReplayResult, replay  # noqa: E402
from scheduler.trace import load_nodes, load_pods  # noqa: E402

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
    source: TraceSource, trace: str, allocator: DeviceAllocator, cpu_nics: int, share_nics: int, seeds: range
) -> tuple[list[ReplayResult], float]:
    rows = load_nodes(source.nodes())
    pods = load_pods(source.pods(trace))
    started = time.perf_counter()
    results = [
        replay(
            rows, pods, make_policy("railnet", pods, allocator, cpu_nics, share_nics), seed, topology="hgx"
        )
        for seed in seeds
    ]
    return results, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="device choice quality on the openb replay")
    add_option(parser)
    parser.add_argument("--seeds", type=int, default=1, help="seeds 42 upwards (report: 5)")
    args = parser.parse_args(argv)
    source = resolve(args.openb_dir)
    seeds = range(FIRST_SEED, FIRST_SEED + args.seeds)
    print(
        f"Topology quality on the {source.label()} replay, HGX-like 8-GPU nodes, seeds {seeds[0]}..{seeds[-1]}"
    )
    if not source.real:
        print(f"NOT openb: a generated trace in its format. {HOW_TO_GET}.")
    for (scenario, cpu_nics, share_nics), trace in [(sc, t) for sc in SCENARIOS for t in TRACES]:
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
            results, seconds = run(source, trace, allocator, cpu_nics, share_nics, seeds)
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
