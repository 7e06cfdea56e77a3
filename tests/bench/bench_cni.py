"""CNI ADD/DEL latency and throughput: railnet vs the reference macvlan + host-local.

Both are exec'd exactly as a container runtime execs them, interleaved in the same run (the
order alternates every iteration) so machine load hits both alike. Prints p50/p99 and ratios
(railnet / reference: below 1.0 means railnet is faster), the shim's share of railnet's ADD
time, and 400 ADD/DEL pairs from 8 parallel callers.

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

from railnet.lab import REFERENCE_CNI_DIR, Lab, run_plugin  # noqa: E402

RANGES = [[{"subnet": "10.240.0.0/16"}]]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Contender:
    def __init__(self, name: str, binary: Path, conf: dict[str, Any], cni_path: list[Path], env: dict[str, str]):
        self.name, self.binary, self.conf, self.cni_path, self.env = name, binary, conf, cni_path, env
        self.add: list[float] = []
        self.delete: list[float] = []

    def cycle(self, netns: str, cid: str, record: bool = True) -> None:
        add = run_plugin(self.binary, "ADD", self.conf, container_id=cid, ifname="net1", netns=netns,
                         cni_path=self.cni_path, env=self.env)
        if not add.ok:
            raise RuntimeError(f"{self.name} ADD failed: {add.output}")
        delete = run_plugin(self.binary, "DEL", self.conf, container_id=cid, ifname="net1", netns=netns,
                            cni_path=self.cni_path, env=self.env)
        if not delete.ok:
            raise RuntimeError(f"{self.name} DEL failed: {delete.output}")
        if record:
            self.add.append(add.seconds * 1e3)
            self.delete.append(delete.seconds * 1e3)


def shim_import_profile(shim: Path) -> str:
    """`python -X importtime` over the installed shim: the modules it imports and their cost."""
    interpreter, flags = shim.read_text().splitlines()[0][2:].split()
    proc = subprocess.run([interpreter, flags, "-X", "importtime", str(shim)], input=b"",
                          env={"CNI_COMMAND": "VERSION"}, capture_output=True, check=False)
    rows = [line for line in proc.stderr.decode().splitlines() if line.startswith("import time:")]
    total = sum(int(r.split("|")[1]) for r in rows[1:] if r.split("|")[1].strip().isdigit())
    top = sorted(rows[1:], key=lambda r: -int(r.split("|")[1]))[:3]
    names = ", ".join(f"{r.split('|')[2].strip()} {int(r.split('|')[1]) / 1e3:.1f}ms" for r in top)
    return f"{len(rows) - 1} modules, {total / 1e3:.1f} ms cumulative (top: {names})"


def agent_add_ms(log: Path, since: float) -> list[float]:
    out = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("cmd") == "ADD" and entry.get("ts", 0) >= since and "ms" in entry:
            out.append(float(entry["ms"]))
    return out


def throughput(contender: Contender, lab: Lab, pairs: int, callers: int) -> float:
    namespaces = [lab.netns(f"{contender.name[:3]}t{i}") for i in range(callers)]
    per_caller = pairs // callers

    def work(i: int) -> None:
        for k in range(per_caller):
            contender.cycle(namespaces[i], f"tp{i}-{k}", record=False)

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(work, range(callers)))
    return per_caller * callers / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--callers", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_cni: needs root", file=sys.stderr)
        return 1
    with Lab("rnb") as lab:
        nic = lab.nic("nic")
        agent = lab.agent()
        bin_dir = lab.install_shim()
        base = {"cniVersion": "1.0.0", "name": "bench", "master": nic, "mode": "bridge"}
        reference = Contender("reference macvlan+host-local", REFERENCE_CNI_DIR / "macvlan",
                              {**base, "type": "macvlan",
                               "ipam": {"type": "host-local", "ranges": RANGES, "dataDir": str(lab.tmp / "hl")}},
                              [REFERENCE_CNI_DIR], {})
        railnet = Contender("railnet-macvlan+railnet-ipam", bin_dir / "railnet-macvlan",
                            {**base, "type": "railnet-macvlan", "ipam": {"type": "railnet-ipam", "ranges": RANGES}},
                            [bin_dir], agent.env())
        ref_ns, our_ns = lab.netns("ref"), lab.netns("our")
        for _ in range(5):  # warm both (page cache, agent caches)
            reference.cycle(ref_ns, "warm", record=False)
            railnet.cycle(our_ns, "warm", record=False)
        since = time.time()
        for i in range(args.iterations):
            pair = [(reference, ref_ns), (railnet, our_ns)]
            for contender, ns in (pair if i % 2 == 0 else pair[::-1]):
                contender.cycle(ns, f"it{i}")
        agent_ms = agent_add_ms(agent.log_path, since)

        print(f"CNI latency, {args.iterations} interleaved ADD+DEL cycles each, cniVersion 1.0.0, load avg "
              f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"{'plugin':<32}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}  (ms)")
        for c in (reference, railnet):
            print(f"{c.name:<32}{pct(c.add, .5):>9.2f}{pct(c.add, .99):>9.2f}{pct(c.delete, .5):>9.2f}"
                  f"{pct(c.delete, .99):>9.2f}")
        ratio = {k: pct(getattr(railnet, a), q) / pct(getattr(reference, a), q)
                 for k, a, q in (("ADD p50", "add", .5), ("ADD p99", "add", .99), ("DEL p50", "delete", .5),
                                 ("DEL p99", "delete", .99))}
        print("ratio railnet/reference: " + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items())
              + f"  (target ADD p50 <= 1.0: {'met' if ratio['ADD p50'] <= 1.0 else 'NOT met'})")
        agent_p50 = statistics.median(agent_ms) if agent_ms else float("nan")
        add_p50 = pct(railnet.add, .5)
        print(f"railnet ADD p50 {add_p50:.2f} ms = agent {agent_p50:.2f} ms + shim/exec/socket "
              f"{add_p50 - agent_p50:.2f} ms (shim share {(add_p50 - agent_p50) / add_p50:.0%})")
        print(f"shim imports: {shim_import_profile(bin_dir / 'railnet-macvlan')}")

        ref_tp = throughput(reference, lab, args.pairs, args.callers)
        our_tp = throughput(railnet, lab, args.pairs, args.callers)
        print(f"throughput, {args.pairs} ADD/DEL pairs from {args.callers} parallel callers: reference "
              f"{ref_tp:.1f} pairs/s, railnet {our_tp:.1f} pairs/s, ratio railnet/reference {our_tp / ref_tp:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
