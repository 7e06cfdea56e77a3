"""The dev cluster's real node: pod create -> Running latency and the node's peak memory.

Brings up its own dev cluster with a real node (containerd + runc + kubelet + kube-proxy + CoreDNS),
then creates N pods (the test image, `sleep infinity`, primary network bridge + host-local) in one
burst and again one at a time, and reports create -> Running p50/p99 for both. While the pods start,
a sampler reads the RSS of every node process (containerd, its runc shims, kubelet, kube-proxy,
CoreDNS) every 100 ms; the peak of their sum is the node's peak memory.

There is no peer in this run: it is the baseline a later railnet-CNI run on the same node compares
with (the same pods with a railnet secondary network).

    sudo .venv/bin/python tests/bench/bench_node_pods.py [--pods 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kubernetes import client, config, watch  # noqa: E402

from railnet.dev import node  # noqa: E402
from railnet.dev.devcluster import DevCluster, NodeSet  # noqa: E402
from tests.kube.kubeutil import wait_for  # noqa: E402
from tests.node import helpers as h  # noqa: E402

NODE_PROCESSES = ("containerd", "kubelet", "kube-proxy", "coredns")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class MemorySampler(threading.Thread):
    """Peak RSS (KiB) of the node's processes, per process name and summed, sampled every 100 ms."""

    def __init__(self, cluster: DevCluster) -> None:
        super().__init__(daemon=True)
        procs = cluster.state()["processes"]
        self.pids = {name: int(procs[name]["pid"]) for name in NODE_PROCESSES}
        self.socket = node.Layout(cluster.dir, cluster.name).socket
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.peak_shims = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            sample = {name: rss_kib(pid) for name, pid in self.pids.items()}
            shims = node.shim_processes(self.socket)
            sample["runc shims"] = sum(rss_kib(p) for p in shims)
            for name, kib in sample.items():
                self.peak[name] = max(self.peak.get(name, 0), kib)
            self.peak_total = max(self.peak_total, sum(sample.values()))
            self.peak_shims = max(self.peak_shims, len(shims))
            self._done.wait(0.1)

    def stop(self) -> None:
        self._done.set()
        self.join()


def running_latencies(core: client.CoreV1Api, ns: str, names: list[str], created: dict[str, float],
                      timeout: float = 300) -> dict[str, float]:
    """Seconds from our create call to the first watch event that shows the pod Running."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, ns, timeout_seconds=int(timeout)):
        pod = event["object"]
        name = pod.metadata.name
        if name in created and name not in done and pod.status.phase == "Running":
            done[name] = time.monotonic() - created[name]
        if len(done) == len(names) or time.monotonic() > deadline:
            w.stop()
    missing = sorted(set(names) - set(done))
    if missing:
        raise SystemExit(f"pods never Running within {timeout:.0f}s: {missing}")
    return done


def burst(core: client.CoreV1Api, ns: str, count: int, prefix: str) -> list[float]:
    names = [f"{prefix}-{i}" for i in range(count)]
    created: dict[str, float] = {}
    result: dict[str, float] = {}
    waiter = threading.Thread(target=lambda: result.update(running_latencies(core, ns, names, created)))
    waiter.start()
    time.sleep(0.5)  # the watch is open before the first create
    for name in names:
        created[name] = time.monotonic()
        core.create_namespaced_pod(ns, h.sleeper(name, labels={"bench": prefix}))
    waiter.join()
    return [result[n] for n in names]


def one_by_one(core: client.CoreV1Api, ns: str, count: int, prefix: str) -> list[float]:
    out = []
    for i in range(count):
        t0 = time.monotonic()
        core.create_namespaced_pod(ns, h.sleeper(f"{prefix}-{i}", labels={"bench": prefix}))
        h.running(core, ns, f"{prefix}-{i}", timeout=120)
        out.append(time.monotonic() - t0)
    return out


def delete_set(core: client.CoreV1Api, ns: str, prefix: str, bridge: str) -> float:
    """Seconds from the delete call until the node has torn the pods down (only the warm pod's port is
    left on the bridge), not just until the API objects are gone."""
    t0 = time.monotonic()
    core.delete_collection_namespaced_pod(ns, label_selector=f"bench={prefix}", grace_period_seconds=0)
    deadline = time.monotonic() + 180
    while core.list_namespaced_pod(ns, label_selector=f"bench={prefix}").items or len(h.bridge_ports(bridge)) > 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"pods {prefix}-* not torn down within 180 s")
        time.sleep(0.1)
    return time.monotonic() - t0


def report(label: str, values: list[float]) -> None:
    print(f"| {label} | {len(values)} | {statistics.median(values):.2f} | {pct(values, 0.99):.2f} | "
          f"{max(values):.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the real node runs containerd and kubelet")
    dev = DevCluster(f"bench-node-{os.getpid()}", owner=True)
    before = node.host_state()
    t0 = time.monotonic()
    dev.up(NodeSet(count=1), log=lambda msg: None, real_node=True)
    print(f"dev cluster with a real node up in {time.monotonic() - t0:.1f} s; load {os.getloadavg()[0]:.1f}")
    layout = node.Layout(dev.dir, dev.name)
    try:
        api = config.new_client_from_config(config_file=str(dev.kubeconfig))
        core = client.CoreV1Api(api)
        ns = "bench"
        core.create_namespace({"metadata": {"name": ns}})
        wait_for(lambda: core.list_namespaced_service_account(ns).items, 60, "default ServiceAccount")
        core.create_namespaced_pod(ns, h.sleeper("warm"))  # first pod pays the image's first unpack
        h.running(core, ns, "warm")
        sampler = MemorySampler(dev)
        sampler.start()
        burst_s = burst(core, ns, args.pods, "burst")
        burst_del = delete_set(core, ns, "burst", layout.bridge)
        serial_s = one_by_one(core, ns, args.pods, "serial")
        serial_del = delete_set(core, ns, "serial", layout.bridge)
        sampler.stop()
        print()
        print(f"pod create -> Running, {args.pods} pods (test image, sleep), seconds")
        print()
        print("| how | pods | p50 | p99 | max |")
        print("|---|---|---|---|---|")
        report("burst (all created at once)", burst_s)
        report("one at a time", serial_s)
        print()
        print(f"delete a set of {args.pods} and wait until their veths are gone from the bridge: "
              f"burst set {burst_del:.1f} s, one-at-a-time set {serial_del:.1f} s")
        print()
        print(f"peak RSS of the node's processes while the pods started (MiB; at most {sampler.peak_shims} "
              f"shims at once)")
        print()
        print("| process | peak RSS MiB |")
        print("|---|---|")
        for name, kib in sampler.peak.items():
            print(f"| {name} | {kib / 1024:.0f} |")
        print(f"| **sum (peak of the sum)** | **{sampler.peak_total / 1024:.0f}** |")
        api.close()
    finally:
        dev.down(log=lambda msg: None)
    left = node.leftovers(layout, before)
    if left:
        print(f"LEAK: the real node left {left}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
