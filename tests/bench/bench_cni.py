"""CNI ADD/DEL latency and throughput: railnet vs the reference macvlan + host-local.

Both are exec'd exactly as a container runtime execs them, interleaved in the same run (the
order alternates every iteration) so machine load hits both alike. Prints p50/p99 and ratios
(railnet / reference: below 1.0 means railnet is faster), the shim's share of railnet's ADD
time, and throughput: 400 ADD/DEL pairs from 8 parallel callers per contender, run in rounds that
alternate reference and railnet (rotating who goes first) so load drift hits both alike. The
Python shim's import profile sums each module's *self* time (``-X importtime``), so nested imports
are not counted twice.

    sudo .venv/bin/python tests/bench/bench_cni.py [--iterations 200] [--pairs 400] [--callers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from railnet.dev.lab import REFERENCE_CNI_DIR, Lab, run_plugin  # noqa: E402

RANGES = [[{"subnet": "10.240.0.0/16"}]]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Contender:
    def __init__(
        self,
        name: str,
        binary: Path,
        conf: dict[str, Any],
        cni_path: list[Path],
        env: dict[str, str],
        tag: str,
    ):
        self.name, self.binary, self.conf, self.cni_path, self.env, self.tag = (
            name,
            binary,
            conf,
            cni_path,
            env,
            tag,
        )
        self.add: list[float] = []
        self.delete: list[float] = []

    def cycle(self, netns: str, cid: str, record: bool = True) -> None:
        calls = []
        for command in ("ADD", "DEL"):
            call = run_plugin(
                self.binary,
                command,
                self.conf,
                container_id=cid,
                ifname="net1",
                netns=netns,
                cni_path=self.cni_path,
                env=self.env,
            )
            if not call.ok:
                raise RuntimeError(f"{self.name} {command} failed: {call.output}")
            calls.append(call)
        add, delete = calls
        if record:
            self.add.append(add.seconds * 1e3)
            self.delete.append(delete.seconds * 1e3)


def shim_import_profile(shim: Path) -> str:
    """`python -X importtime` over the installed shim: the modules it imports and their own cost.

    Each row is ``self | cumulative | name``; a parent's cumulative time includes its children,
    so the total is the sum of *self* times."""
    interpreter, flags = shim.read_text().splitlines()[0][2:].split()
    proc = subprocess.run(
        [interpreter, flags, "-X", "importtime", str(shim)],
        input=b"",
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        check=False,
    )
    rows = []
    for line in proc.stderr.decode().splitlines():
        if not line.startswith("import time:"):
            continue
        self_us, _cumulative, name = line[len("import time:") :].split("|")
        if self_us.strip().isdigit():
            rows.append((int(self_us), name.strip()))
    total = sum(us for us, _ in rows)
    top = ", ".join(f"{name} {us / 1e3:.1f}ms" for us, name in sorted(rows, reverse=True)[:3])
    return f"{len(rows)} modules, {total / 1e3:.1f} ms in total (self times; top: {top})"


def agent_add_ms(log: Path, since: float, cid_prefix: str) -> list[float]:
    """The agent's own time per ADD, from its structured log."""
    out = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            entry.get("cmd") == "ADD"
            and entry.get("ts", 0) >= since
            and "ms" in entry
            and str(entry.get("cid", "")).startswith(cid_prefix)
        ):
            out.append(float(entry["ms"]))
    return out


def throughput(
    contenders: list[Contender], lab: Lab, pairs: int, callers: int, rounds: int = 4
) -> list[float]:
    """Pairs per second for each contender, measured in ``rounds`` alternating blocks."""
    namespaces = {c.tag: [lab.netns(f"{c.tag}t{i}") for i in range(callers)] for c in contenders}
    per_caller = max(1, pairs // callers // rounds)
    busy = {c.tag: 0.0 for c in contenders}
    done = {c.tag: 0 for c in contenders}
    for r in range(rounds):
        for c in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:

            def work(i: int, c: Contender = c, r: int = r) -> None:
                for k in range(per_caller):
                    c.cycle(namespaces[c.tag][i], f"tp{r}-{i}-{k}", record=False)

            started = time.perf_counter()
            with ThreadPoolExecutor(callers) as pool:
                list(pool.map(work, range(callers)))
            busy[c.tag] += time.perf_counter() - started
            done[c.tag] += per_caller * callers
    return [done[c.tag] / busy[c.tag] for c in contenders]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--callers", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_cni: SKIPPED, it needs root (network namespaces, macvlan links): run it as root")
        return 0
    with Lab("rnb") as lab:
        nic = lab.nic("nic")
        agent = lab.agent()
        base = {"cniVersion": "1.0.0", "name": "bench", "master": nic, "mode": "bridge"}
        reference = Contender(
            "reference macvlan+host-local",
            REFERENCE_CNI_DIR / "macvlan",
            {
                **base,
                "type": "macvlan",
                "ipam": {"type": "host-local", "ranges": RANGES, "dataDir": str(lab.tmp / "hl")},
            },
            [REFERENCE_CNI_DIR],
            {},
            "ref",
        )
        ours = {
            **base,
            "type": "railnet-macvlan",
            "policyRouting": False,  # like for like: no policy rules
            "ipam": {"type": "railnet-ipam", "ranges": RANGES},
        }
        contenders = [reference]
        for kind in ("native", "python"):
            bin_dir = lab.install_shim(kind)
            contenders.append(
                Contender(
                    f"railnet ({kind} shim)", bin_dir / "railnet-macvlan", ours, [bin_dir], agent.env(), kind
                )
            )
        namespaces = {c.tag: lab.netns(c.tag) for c in contenders}
        for _ in range(5):  # warm all (page cache, agent caches)
            for c in contenders:
                c.cycle(namespaces[c.tag], f"{c.tag}-warm", record=False)
        since = time.time()
        for i in range(args.iterations):
            order = contenders[i % 3 :] + contenders[: i % 3]  # rotate who goes first
            for c in order:
                c.cycle(namespaces[c.tag], f"{c.tag}-it{i}")

        print(
            f"CNI latency, {args.iterations} interleaved ADD+DEL cycles each, cniVersion 1.0.0, "
            f"load avg {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
        )
        print(f"{'plugin':<32}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}   ratios vs reference")
        for c in contenders:
            ratios = [
                pct(c.add, 0.5) / pct(reference.add, 0.5),
                pct(c.add, 0.99) / pct(reference.add, 0.99),
                pct(c.delete, 0.5) / pct(reference.delete, 0.5),
                pct(c.delete, 0.99) / pct(reference.delete, 0.99),
            ]
            print(
                f"{c.name:<32}{pct(c.add, 0.5):>9.2f}{pct(c.add, 0.99):>9.2f}{pct(c.delete, 0.5):>9.2f}"
                f"{pct(c.delete, 0.99):>9.2f}   " + " ".join(f"{r:.2f}" for r in ratios)
            )
        native = contenders[1]
        ratio = pct(native.add, 0.5) / pct(reference.add, 0.5)
        print(
            f"target ADD p50 ratio <= 1.0 (native shim): {ratio:.2f} -> {'met' if ratio <= 1.0 else 'NOT met'}"
        )
        for c in contenders[1:]:
            agent_p50 = statistics.median(agent_add_ms(agent.log_path, since, c.tag))
            add_p50 = pct(c.add, 0.5)
            print(
                f"{c.name}: ADD p50 {add_p50:.2f} ms = agent {agent_p50:.2f} ms + shim, exec and socket "
                f"{add_p50 - agent_p50:.2f} ms (shim share {(add_p50 - agent_p50) / add_p50:.0%})"
            )
        print(f"python shim imports: {shim_import_profile(contenders[2].binary)}")

        ref_tp, our_tp = throughput([reference, native], lab, args.pairs, args.callers)
        print(
            f"throughput, {args.pairs} ADD/DEL pairs each from {args.callers} parallel callers, 4 alternating "
            f"rounds: reference {ref_tp:.1f} pairs/s, railnet (native shim) {our_tp:.1f} pairs/s, "
            f"ratio {our_tp / ref_tp:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
