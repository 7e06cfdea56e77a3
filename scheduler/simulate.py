"""``railnet simulate``: replay a GPU cluster trace with the FGD paper's methodology.

    railnet simulate --nodes NODES.csv --pods PODS.csv [--policy railnet|bestfit|random|fgd]
                     [--seeds N] [--topology hgx|none] [--json]

Pods arrive in a per-seed shuffled order, the workload is tuned to 130 % of the GPU capacity, pods
never leave; the GPU allocation % is read when arrived GPU demand reaches 100 % and 130 % of
capacity, averaged over seeds 42, 43, ... (see ``scheduler.replay``). With ``--topology hgx``
(default) 8-GPU nodes get a synthetic HGX-like box with one RDMA NIC per GPU and whole-GPU pods
on them ask one rail NIC per GPU; the topology figures are computed on those nodes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from scheduler.policies import POLICIES, make_policy
from scheduler.progress import ProgressBar
from scheduler.replay import CHECKPOINTS, FIRST_SEED, ReplayResult, replay
from scheduler.trace import TraceError, load_nodes, load_pods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="railnet simulate",
        description="Replay a GPU cluster trace (openb CSV format) and report GPU allocation.",
    )
    parser.add_argument(
        "--nodes", required=True, type=Path, help="node list CSV (sn,cpu_milli,memory_mib,gpu,model)"
    )
    parser.add_argument(
        "--pods",
        required=True,
        type=Path,
        help="pod list CSV (name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec])",
    )
    parser.add_argument(
        "--policy", default="railnet", choices=POLICIES, help="placement policy (default railnet)"
    )
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds, 42 upwards (default 10)")
    parser.add_argument(
        "--topology",
        default="hgx",
        choices=("hgx", "none"),
        help="synthesize HGX-like 8-GPU boxes (default hgx)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summarize(results: Sequence[ReplayResult]) -> dict[str, object]:
    """The JSON document: means over seeds plus the per-seed values."""
    out: dict[str, object] = {
        "policy": results[0].policy,
        "seeds": [r.seed for r in results],
        "capacity_gpus": results[0].capacity_milli // 1000,
    }
    for point in CHECKPOINTS:
        out[f"allocated_pct_at_{point}"] = _mean([r.allocation_at(point) for r in results])
        out[f"allocated_pct_at_{point}_crossing"] = _mean([r.allocation_at_crossing(point) for r in results])
    out["pods_per_seed"] = _mean([r.pods for r in results])
    out["failed_pods_per_seed"] = _mean([r.failed for r in results])
    topo = [r.topology.as_dict() for r in results]
    out["topology"] = {
        key: _mean([t[key] for t in topo])
        for key in (
            "multi_gpu_pods",
            "best_tier_pct",
            "mean_pair_link_score",
            "rail_gpus",
            "same_switch_nic_pct",
        )
    }
    out["per_seed"] = [
        {
            "seed": r.seed,
            **{f"allocated_pct_at_{p}": r.allocation_at(p) for p in CHECKPOINTS},
            "failed_pods": r.failed,
            "seconds": round(r.seconds, 2),
        }
        for r in results
    ]
    out["seconds"] = round(sum(r.seconds for r in results), 2)
    return out


def _fmt(value: object, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(summary: dict[str, object], stream: TextIO) -> None:
    topo = summary["topology"]
    assert isinstance(topo, dict)
    seeds = summary["seeds"]
    assert isinstance(seeds, list)
    rows = [
        ("policy", summary["policy"]),
        ("seeds", f"{len(seeds)} ({seeds[0]}..{seeds[-1]})"),
        ("GPU capacity", summary["capacity_gpus"]),
        ("allocated % at 100 % arrived", _fmt(summary["allocated_pct_at_100"])),
        ("allocated % at 130 % arrived", _fmt(summary["allocated_pct_at_130"])),
        ("failed pods per seed", _fmt(summary["failed_pods_per_seed"], 1)),
        ("multi-GPU pods at best tier %", _fmt(topo["best_tier_pct"])),
        ("GPUs with a same-switch NIC %", _fmt(topo["same_switch_nic_pct"])),
        ("seconds", _fmt(summary["seconds"], 1)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        stream.write(f"{name:<{width}}  {value}\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        sys.stderr.write("railnet simulate: --seeds must be at least 1\n")
        return 2
    try:
        rows = load_nodes(args.nodes)
        pods = load_pods(args.pods)
    except TraceError as err:
        sys.stderr.write(f"railnet simulate: {err}\n")
        return 2
    policy = make_policy(args.policy, pods)
    bar = ProgressBar(args.seeds)
    results = []
    for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):

        def report(done: int, total: int, seed: int = seed) -> None:
            bar.update(done, total, f"{args.policy} seed {seed}")

        results.append(replay(rows, pods, policy, seed, args.topology, progress=report))
        bar.step_done()
    bar.close()
    summary = summarize(results)
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        print_table(summary, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
