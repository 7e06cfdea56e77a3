"""Choose railnet's CPU-stranding weight on tuning seeds that the benchmark report never uses.

    .venv/bin/python tests/bench/sweep_stranding_weight.py --openb-dir DIR [--seeds 0-4] [--weights 0,0.5,1,2,4] [--traces all]

Replays openb variants (``--traces``: default ``default,multigpu50``; ``all`` for the 17 with
published results) with the FGD methodology for each weight on seeds 0..4 (the report uses
42..51) and prints the GPU allocation % at 130 % arrived demand per weight, variant and seed. The
chosen weight has the highest mean over all variants and tuning seeds (ties: the smaller weight);
it is committed as ``scheduler.policies.STRANDING_WEIGHT``.
Not part of ``make bench`` (it is run when the policy changes).
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

from openb import add_option, add_traces_option, available, parse_traces, resolve  # noqa: E402

from scheduler.policies import STRANDING_WEIGHT, make_policy  # noqa: E402
from scheduler.replay import replay  # noqa: E402
from scheduler.trace import load_nodes, load_pods  # noqa: E402

REPORT_SEEDS = range(42, 52)


def seed_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_option(parser)
    add_traces_option(parser)
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0-4"), help="tuning seeds, e.g. 0-4")
    parser.add_argument("--weights", default="0,0.5,1,2,4", help="comma-separated weights to try")
    args = parser.parse_args(argv)
    if set(args.seeds) & set(REPORT_SEEDS):
        parser.error("tuning seeds must not overlap the report's seeds 42..51")
    weights = [float(w) for w in args.weights.split(",")]
    traces = parse_traces(args.traces)
    source = resolve(args.openb_dir, traces)
    traces = available(source, traces)
    rows = load_nodes(source.nodes())
    print(f"stranding-weight sweep on {source.label()}, tuning seeds {args.seeds[0]}..{args.seeds[-1]}")
    print()
    print("| weight | trace | alloc % at 130 % per seed | mean | wall s |")
    print("|---|---|---|---|---|")
    overall: dict[float, list[float]] = {w: [] for w in weights}
    for trace in traces:
        pods = load_pods(source.pods(trace))
        for weight in weights:
            started = time.perf_counter()
            values = [
                replay(rows, pods, make_policy("railnet", pods, stranding_weight=weight), seed).allocation_at(
                    130
                )
                or 0.0
                for seed in args.seeds
            ]
            overall[weight].extend(values)
            per_seed = " ".join(f"{v:.2f}" for v in values)
            print(
                f"| {weight:g} | {trace} | {per_seed} | {statistics.fmean(values):.3f} | "
                f"{time.perf_counter() - started:.0f} |",
                flush=True,
            )
    best = max(weights, key=lambda w: (statistics.fmean(overall[w]), -w))
    print()
    for weight in weights:
        print(f"weight {weight:g}: mean over all variants and seeds {statistics.fmean(overall[weight]):.3f}")
    print(f"chosen weight: {best:g} (committed STRANDING_WEIGHT: {STRANDING_WEIGHT:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
