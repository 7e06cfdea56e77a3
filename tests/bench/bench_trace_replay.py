"""Trace replay (openb, Alibaba cluster-trace-gpu-v2023): railnet vs FGD, BestFit and Random.

    .venv/bin/python tests/bench/bench_trace_replay.py --openb-dir DIR [--seeds 10] [--traces all]

Methodology of the FGD paper (Weng et al., USENIX ATC 2023; see ``scheduler.replay``): per-seed
shuffle, workload tuned to 130 % of GPU capacity, pods never leave, GPU allocation % at 100 % and
130 % arrived demand. Nodes: the GPU node list, 8-GPU nodes as HGX-like boxes (this changes
nothing for the baselines' numbers). All four policies come from ``scheduler.policies``.

Seeds are the held-out 42, 43, ...: railnet's one tuned parameter (the stranding weight) was
chosen on other seeds (``TUNING_SEEDS``) by ``sweep_stranding_weight.py``. railnet learns its workload from arrived pods
only; FGD gets the whole trace's shape distribution in advance, as in the paper. Besides means,
the script prints the per-seed paired difference railnet - FGD at 130 %.

``--traces all`` replays the 17 variants with published results (``openb.TRACES``); the default is
default and multigpu50. After the per-variant tables it prints one summary row per variant: railnet
and our FGD measured, the published FGD, and the paired differences railnet - FGD at 130 %.
``--json FILE`` also writes every per-seed value.

Without ``--openb-dir`` / ``RAILNET_OPENB_DIR`` it replays a generated trace in the openb format
and says so: the published comparison needs the real trace (see ``openb.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from openb import (  # noqa: E402
    HOW_TO_GET,
    PUBLISHED,
    TraceSource,
    add_option,
    add_traces_option,
    available,
    parse_traces,
    published_fgd,
    resolve,
)

from scheduler.policies import POLICIES, STRANDING_WEIGHT, TUNING_SEEDS, make_policy  # noqa: E402
from scheduler.replay import CHECKPOINTS, FIRST_SEED, ReplayResult, replay  # noqa: E402
from scheduler.trace import load_nodes, load_pods  # noqa: E402

ORDER = ("railnet", "fgd", "bestfit", "random")


def run(source: TraceSource, trace: str, policy: str, seeds: range) -> tuple[list[ReplayResult], float]:
    rows = load_nodes(source.nodes())
    pods = load_pods(source.pods(trace))
    started = time.perf_counter()
    results = []
    for seed in seeds:
        results.append(replay(rows, pods, make_policy(policy, pods), seed))
        print(
            f"  [{trace} {policy} seed {seed}: {at(results[-1], 130):.2f} % at 130 %, "
            f"{results[-1].seconds:.0f} s]",
            file=sys.stderr,
            flush=True,
        )
    return results, time.perf_counter() - started


def at(result: ReplayResult, point: int) -> float:
    return result.allocation_at(point) or 0.0


Summary = dict[str, object]


def report_trace(source: TraceSource, trace: str, policies: list[str], seeds: range) -> Summary:
    measured = {name: run(source, trace, name, seeds) for name in policies}
    capacity = next(iter(measured.values()))[0][0].capacity_milli / 1000
    print()
    print(f"trace {trace} ({source.label()}, {capacity:.0f} GPUs): GPU allocation %, mean over seeds")
    print()
    print("| policy | source | alloc % at 100 % | alloc % at 130 % | idle GPUs at 130 % | wall s |")
    print("|---|---|---|---|---|---|")
    summary: Summary = {"trace": trace, "seeds": list(seeds)}
    for name, (results, seconds) in measured.items():
        a100, a130 = (statistics.fmean(at(r, p) for r in results) for p in CHECKPOINTS)
        idle = capacity * (100 - a130) / 100
        print(f"| {name} | measured | {a100:.2f} | {a130:.2f} | {idle:.0f} | {seconds:.0f} |")
        summary[name] = {"at100": [at(r, 100) for r in results], "at130": [at(r, 130) for r in results]}
    if source.real:
        for (row_trace, name), (a100, a130) in PUBLISHED.items():
            if row_trace == trace:
                idle = capacity * (100 - a130) / 100
                print(f"| {name} | published (FGD paper) | {a100:.2f} | {a130:.2f} | {idle:.0f} | - |")
    if "railnet" in measured and "fgd" in measured:
        ours, fgd = measured["railnet"][0], measured["fgd"][0]
        diffs = [at(r, 130) - at(f, 130) for r, f in zip(ours, fgd, strict=True)]
        wins = sum(d > 0 for d in diffs)
        print()
        print("railnet - FGD (measured here) at 130 %, per seed: " + " ".join(f"{d:+.2f}" for d in diffs))
        print(
            f"paired difference: mean {statistics.fmean(diffs):+.2f}, min {min(diffs):+.2f}, "
            f"max {max(diffs):+.2f} points; railnet higher on {wins} of {len(diffs)} seeds"
        )
    sys.stdout.flush()
    return summary


def print_summary(summaries: list[Summary], real: bool) -> None:
    """One row per variant: railnet and FGD measured, the published FGD, paired differences."""
    rows = [s for s in summaries if "railnet" in s and "fgd" in s]
    if not rows:
        return
    seeds = sorted({seed for s in rows for seed in s["seeds"]})  # type: ignore[attr-defined]
    print()
    print(
        f"summary at 130 % arrived demand, held-out seeds {seeds[0]}..{seeds[-1]} (how many per variant: seeds)"
    )
    print()
    print(
        "| variant | seeds | railnet | FGD (ours) | FGD (published) | railnet - published | "
        "railnet - FGD (ours) per seed: mean | min | max | wins |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    beat_published = 0
    for s in rows:
        ours: list[float] = s["railnet"]["at130"]  # type: ignore[index]
        fgd: list[float] = s["fgd"]["at130"]  # type: ignore[index]
        diffs = [a - b for a, b in zip(ours, fgd, strict=True)]
        mean = statistics.fmean(ours)
        published = published_fgd(str(s["trace"])) if real else None
        pub = f"{published[1]:.2f}" if published else "-"
        vs_pub = f"{mean - published[1]:+.2f}" if published else "-"
        beat_published += bool(published and mean > published[1])
        print(
            f"| {s['trace']} | {len(diffs)} | {mean:.2f} | {statistics.fmean(fgd):.2f} | {pub} | {vs_pub} | "
            f"{statistics.fmean(diffs):+.2f} | {min(diffs):+.2f} | {max(diffs):+.2f} | "
            f"{sum(d > 0 for d in diffs)}/{len(diffs)} |"
        )
    if real:
        print()
        print(f"railnet above the published FGD mean at 130 % on {beat_published} of {len(rows)} variants")


def merge(runs: list[list[Summary]]) -> list[Summary]:
    """Per-variant summaries of several runs (different seeds) joined, in first-seen variant order."""
    out: dict[str, Summary] = {}
    for run_ in runs:
        for s in run_:
            trace = str(s["trace"])
            into = out.setdefault(trace, {"trace": trace, "seeds": []})
            if set(into["seeds"]) & set(s["seeds"]):  # type: ignore[arg-type]
                raise SystemExit(f"{trace}: seeds {s['seeds']} appear in two runs")
            into["seeds"] = [*into["seeds"], *s["seeds"]]  # type: ignore[misc]
            for name, values in s.items():
                if isinstance(values, dict):
                    held = into.setdefault(name, {"at100": [], "at130": []})
                    for point in ("at100", "at130"):
                        held[point] = [*held[point], *values[point]]  # type: ignore[index]
    return list(out.values())


def print_paired(summaries: list[Summary]) -> None:
    for s in summaries:
        if "railnet" in s and "fgd" in s:
            diffs = [a - b for a, b in zip(s["railnet"]["at130"], s["fgd"]["at130"], strict=True)]  # type: ignore[index]
            print(
                f"{s['trace']} seeds {','.join(map(str, s['seeds']))}: railnet - FGD at 130 %: "  # type: ignore[arg-type]
                + " ".join(f"{d:+.2f}" for d in diffs)
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="openb trace replay: railnet vs FGD, BestFit, Random")
    add_option(parser)
    add_traces_option(parser)
    parser.add_argument("--seeds", type=int, default=5, help="held-out seeds 42 upwards (report: 10)")
    parser.add_argument("--policies", default=",".join(ORDER), help=f"subset of {','.join(POLICIES)}")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=FIRST_SEED,
        help="first held-out seed (42; a later one to extend a run)",
    )
    parser.add_argument("--json", type=Path, help="also write every per-seed value to this file")
    parser.add_argument(
        "--summary-from",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="replay nothing: print the summary of earlier --json files (e.g. seeds 42-46 and 47-51) together",
    )
    args = parser.parse_args(argv)
    if args.summary_from:
        merged = merge([json.loads(path.read_text()) for path in args.summary_from])
        print(f"summary of {', '.join(str(p) for p in args.summary_from)} (no replay run now)")
        print_paired(merged)
        print_summary(merged, args.openb_dir is not None)
        return 0
    policies = [p for p in args.policies.split(",") if p]
    if args.first_seed < FIRST_SEED:
        parser.error(f"seeds below {FIRST_SEED} are tuning seeds; the report uses {FIRST_SEED} and up")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    traces = parse_traces(args.traces)
    source = resolve(args.openb_dir, traces)
    traces = available(source, traces)
    print(
        f"trace replay, FGD methodology, held-out seeds {seeds[0]}..{seeds[-1]}, "
        f"railnet stranding weight {STRANDING_WEIGHT:g} (chosen on tuning seeds {TUNING_SEEDS}), python {sys.version.split()[0]}"
    )
    if not source.real:
        print(f"NOT openb: a generated trace in its format. {HOW_TO_GET}.")
    summaries = []
    for trace in traces:
        summaries.append(report_trace(source, trace, policies, seeds))
        if args.json:
            args.json.write_text(json.dumps(summaries, indent=1) + "\n")
    print_summary(summaries, source.real)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
