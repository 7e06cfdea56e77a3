"""railnet's scheduler vs kube-scheduler on one dev cluster, in one run: 1,000 kwok nodes (hgx-h100
fixture: 8 GPUs + 8 RoCE NICs each, with their NodeTopology objects), 5,000 pods of 1 GPU + 1 NIC.

    .venv/bin/python tests/bench/bench_railnet_scheduler.py [--nodes 1000] [--pods 5000] [--gangs 128] [--modes backlog,arrival] [--json]

Four phases of ``--pods`` pods, each in its own namespace; the pods of a phase are force-deleted
before the next, so every phase starts on an empty cluster:

- ``<scheduler>-backlog``: the scheduler is paused (SIGSTOP) while the pods are created, then
  resumed; pods bound per second from resume to the last bind is its throughput on a full queue;
- ``<scheduler>-arrival``: pods are created from 16 keep-alive connections while the scheduler
  runs; per-pod create -> bound latency (POST answered -> nodeName seen on this process's watch),
  p50 / p99.

kube-scheduler schedules pods with the default schedulerName; ``railnet scheduler`` runs as its own
process (leader election on, 64 bind workers) and takes pods whose schedulerName is ``railnet``.
Both see the same nodes and the same API server; kube-scheduler stays running (idle) during the
railnet phases and the railnet scheduler stays running (idle) during the kube-scheduler phases.
With ``--gangs N``: N PodGroups of 8 pods x 8 GPUs (railnet only; stock kube-scheduler has no gangs):
per gang, its last member's creation -> all its members bound (p50 / p99), and the scheduler's own
planning and bind-call time in that phase (from its metrics endpoint). 128 such gangs fill 1,024
nodes: run them with ``--nodes 1024``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from railnet.dev import k8sbin, kwok_topology  # noqa: E402
from railnet.dev.devcluster import DevCluster, NodeSet, Options, running_cluster  # noqa: E402
from tests.bench.bench_kube_scheduler import _conn, create_namespace  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _pod(name: str, scheduler: str | None, gpus: int = 1, labels: dict[str, str] | None = None) -> dict[str, Any]:
    devices = {"nvidia.com/gpu": str(gpus), "rdma/roce": str(gpus)}
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi", **devices}, "limits": devices}}],
    }
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {"app": "bench"}},
            "spec": spec}


class Follower(threading.Thread):
    """Watches one namespace's pods and stamps when each is first seen bound."""

    def __init__(self, cluster: DevCluster, namespace: str, total: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.namespace, self.total = cluster, namespace, total
        self.bound_at: dict[str, float] = {}
        self.ready = threading.Event()
        self.done = threading.Event()
        self.reconnects = 0
        self.conn: Any = None

    def close(self) -> None:
        """Hang up the watch: a watcher that stops reading slows the API server's event fan-out."""
        self.done.set()
        conn = self.conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        rv = ""
        while not self.done.is_set():
            conn = self.conn = _conn(self.cluster, timeout=600)
            if not rv:
                conn.request("GET", path)
                listing = json.loads(conn.getresponse().read())
                for obj in listing["items"]:
                    self._see(obj)
                rv = listing["metadata"]["resourceVersion"]
            conn.request("GET", f"{path}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1800")
            resp = conn.getresponse()
            self.ready.set()
            while not self.done.is_set():
                try:
                    line = resp.readline()
                except (OSError, ValueError):
                    break
                if not line:
                    self.reconnects += 1
                    break
                event = json.loads(line)
                if event["type"] == "ERROR":
                    rv = "" if event["object"].get("code") == 410 else rv
                    self.reconnects += 1
                    break
                rv = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self._see(event["object"])
            conn.close()

    def _see(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if obj["spec"].get("nodeName") and name not in self.bound_at:
            self.bound_at[name] = time.monotonic()
            if len(self.bound_at) == self.total:
                self.done.set()


def create(cluster: DevCluster, namespace: str, pods: list[dict[str, Any]], workers: int = 16) -> dict[str, float]:
    """POST every pod; returns when each POST was answered (monotonic)."""
    local = threading.local()
    created: dict[str, float] = {}

    def post(body: dict[str, Any]) -> None:
        if not hasattr(local, "conn"):
            local.conn = _conn(cluster)
        local.conn.request("POST", f"/api/v1/namespaces/{namespace}/pods", json.dumps(body),
                           {"Content-Type": "application/json", "Accept": "application/json"})
        resp = local.conn.getresponse()
        answer = resp.read()
        if resp.status != 201:
            raise RuntimeError(f"creating {body['metadata']['name']}: HTTP {resp.status}: {answer[:300]!r}")
        created[body["metadata"]["name"]] = time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(post, pods))
    return created


def delete_all(cluster: DevCluster, namespace: str, names: list[str], timeout: float, workers: int = 16) -> None:
    """Force-delete the phase's pods from 16 connections (deletecollection is serial in the API server)."""
    api = cluster.api()
    local = threading.local()

    def delete(name: str) -> None:
        if not hasattr(local, "conn"):
            local.conn = _conn(cluster)
        local.conn.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}?gracePeriodSeconds=0")
        local.conn.getresponse().read()

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(delete, names))
    deadline = time.monotonic() + timeout
    while api.get(f"/api/v1/namespaces/{namespace}/pods?limit=1")["items"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pods of {namespace} not deleted")
        time.sleep(0.5)


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphaned scheduler


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase(cluster: DevCluster, name: str, pods: list[dict[str, Any]], pid: int, backlog: bool,
          timeout: float) -> dict[str, Any]:
    create_namespace(cluster, name)
    follower = Follower(cluster, name, len(pods))
    follower.start()
    follower.ready.wait(30)
    if backlog:
        os.kill(pid, signal.SIGSTOP)
        try:
            created = create(cluster, name, pods)
        finally:
            t0 = time.monotonic()
            os.kill(pid, signal.SIGCONT)
    else:
        t0 = time.monotonic()
        created = create(cluster, name, pods)
    created_done = time.monotonic()
    if not follower.done.wait(timeout):
        raise TimeoutError(f"{name}: {len(follower.bound_at)} of {len(pods)} bound")
    follower.close()
    last = max(follower.bound_at.values())
    out: dict[str, Any] = {"all_bound_s": round(last - t0, 2), "bind_pods_per_s": round(len(pods) / (last - t0), 1)}
    if not backlog:
        lat = [follower.bound_at[n] - created[n] for n in created]
        out.update(create_pods_per_s=round(len(pods) / (created_done - t0), 1),
                   latency_p50_s=round(statistics.median(lat), 3), latency_p99_s=round(_pct(lat, 0.99), 3),
                   latency_max_s=round(max(lat), 3))
    out["watch_reconnects"] = follower.reconnects
    t_del = time.monotonic()
    delete_all(cluster, name, list(created), timeout)
    out["delete_s"] = round(time.monotonic() - t_del, 1)
    return out


def scrape(port: int) -> dict[str, float]:
    """The scheduler's Prometheus counters and histogram sums/counts (name{labels} -> value)."""
    import urllib.request

    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
    return out


def wait_leading(port: int, deadline: float) -> None:
    """Until the railnet scheduler serves metrics and says it holds the lease."""
    while True:
        with contextlib.suppress(OSError):
            if scrape(port).get("railnet_scheduler_leader") == 1.0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("railnet scheduler did not become leader")
        time.sleep(0.5)


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def gang_phase(cluster: DevCluster, gangs: int, pid: int, timeout: float, metrics_port: int = 0) -> dict[str, Any]:
    """``gangs`` PodGroups of 8 x 8-GPU pods created back to back (16 connections, gang by gang).

    Per gang: its last member's POST answered -> all its members seen bound on this process's watch
    (p50 / p99 / max over gangs); and the whole phase: the last member created -> all bound. With a
    metrics port, the scheduler's own time in the phase: planning (``decision_seconds``, per unit
    tried), bind calls (``bind_seconds``, per pod), a complete gang's wait until it is planned
    (``gang_wait_seconds``) and its plan -> last bind answered (``gang_bind_seconds``); the rest of
    a gang's latency is the two watches (the scheduler seeing the last member, this process seeing
    the binds) and the creation calls' own answer time."""
    ns = "bench-gangs"
    create_namespace(cluster, ns)
    api = cluster.api()
    for g in range(gangs):
        api.request("POST", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{ns}/podgroups", {
            "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": f"g{g:03d}"},
            "spec": {"minMember": 8}})
    pods = [_pod(f"g{g:03d}-{m}", "railnet", gpus=8, labels={"scheduling.x-k8s.io/pod-group": f"g{g:03d}"})
            for g in range(gangs) for m in range(8)]
    follower = Follower(cluster, ns, len(pods))
    follower.start()
    follower.ready.wait(30)
    before = scrape(metrics_port) if metrics_port else {}
    load = os.getloadavg()[0]
    created = create(cluster, ns, pods)
    last_created = max(created.values())
    if not follower.done.wait(timeout):
        raise TimeoutError(f"gangs: {len(follower.bound_at)} of {len(pods)} bound")
    follower.close()
    per_node: dict[str, int] = {}
    for item in api.get(f"/api/v1/namespaces/{ns}/pods")["items"]:
        per_node[item["spec"]["nodeName"]] = per_node.get(item["spec"]["nodeName"], 0) + 1
    per_gang = []
    for g in range(gangs):
        names = [f"g{g:03d}-{m}" for m in range(8)]
        per_gang.append(max(follower.bound_at[n] for n in names) - max(created[n] for n in names))
    out: dict[str, Any] = {
        "gangs": gangs, "pods": len(pods), "load_at_start": round(load, 2), "load_at_end": round(os.getloadavg()[0], 2),
        "created_per_s": round(len(pods) / (last_created - min(created.values())), 1),
        "gang_p50_s": round(statistics.median(per_gang), 3), "gang_p99_s": round(_pct(per_gang, 0.99), 3),
        "gang_max_s": round(max(per_gang), 3),
        "last_created_to_all_bound_s": round(max(follower.bound_at.values()) - last_created, 2),
        "max_pods_per_node": max(per_node.values())}
    if metrics_port:
        after = scrape(metrics_port)
        tried = _delta(before, after, "railnet_scheduler_decision_seconds_count")
        binds = _delta(before, after, "railnet_scheduler_bind_seconds_count")
        out.update(
            units_planned=int(tried),
            plan_s_total=round(_delta(before, after, "railnet_scheduler_decision_seconds_sum"), 3),
            plan_ms_mean=round(1000 * _delta(before, after, "railnet_scheduler_decision_seconds_sum") / max(tried, 1), 2),
            binds=int(binds),
            bind_call_ms_mean=round(1000 * _delta(before, after, "railnet_scheduler_bind_seconds_sum") / max(binds, 1), 1))
        for name in ("gang_wait", "gang_bind"):  # complete -> planned; planned -> last bind answered
            count = _delta(before, after, f"railnet_scheduler_{name}_seconds_count")
            if count:
                total = _delta(before, after, f"railnet_scheduler_{name}_seconds_sum")
                out[f"{name}_ms_mean"] = round(1000 * total / count, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--gangs", type=int, default=0, help="PodGroups of 8 x 8-GPU pods (0: skip)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--order", default="kube,railnet", help="which scheduler's phases run first")
    parser.add_argument("--modes", default="backlog,arrival",
                        help="5,000-pod phases per scheduler (comma list; empty: gangs only)")
    args = parser.parse_args(argv)

    k8sbin.build()
    print(f"==> bench: {args.nodes} kwok nodes (hgx-h100 topology), {args.pods} pods per phase, "
          f"kube-scheduler {k8sbin.KUBERNETES_VERSION} vs railnet scheduler, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    options = Options(node_lease_seconds=200, kwok_parallelism=16, kwok_log_level="WARN")
    results: dict[str, Any] = {"nodes": args.nodes, "pods_per_phase": args.pods, "cpus": os.cpu_count(),
                               "kubernetes": k8sbin.KUBERNETES_VERSION, "load_at_start": os.getloadavg()[0]}
    with running_cluster(f"rbench-{os.getpid()}", nodes=NodeSet(count=0), options=options) as cluster:
        api = cluster.api()
        kwok_topology.install_crds(api)
        t0 = time.monotonic()
        nodes = kwok_topology.node_set("kwok-node-", args.nodes)
        names = cluster.add_nodes(nodes, deadline=t0 + args.timeout)
        kwok_topology.publish(api, names)
        results["nodes_ready_s"] = round(time.monotonic() - t0, 2)
        log = open(cluster.dir / "logs" / "railnet-scheduler.log", "wb")  # noqa: SIM115
        metrics_port = _free_port()
        profile = os.environ.get("RAILNET_PROFILE")  # a cProfile output path for the scheduler process
        railnet = subprocess.Popen(
            [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []), "-m", "railnet.cli", "scheduler", f"--kubeconfig={cluster.kubeconfig}",
             "--log-level=warning", f"--metrics-port={metrics_port}"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            wait_leading(metrics_port, time.monotonic() + 120)
            kube_pid = int(cluster.state()["processes"]["kube-scheduler"]["pid"])
            pids = {"kube": kube_pid, "railnet": railnet.pid}
            for sched in args.order.split(","):
                pid = pids[sched]
                for mode in [m for m in args.modes.split(",") if m]:
                    name = f"{sched}-{mode}"
                    print(f"==> phase {name}", flush=True)
                    pods = [_pod(f"p-{i:05d}", "railnet" if sched == "railnet" else None) for i in range(args.pods)]
                    load = os.getloadavg()[0]
                    results[name] = phase(cluster, f"bench-{name}", pods, pid, mode == "backlog", args.timeout)
                    results[name].update(load_at_start=round(load, 2), load_at_end=round(os.getloadavg()[0], 2))
                    print(f"    {results[name]}", flush=True)
            if args.gangs:
                print(f"==> phase gangs ({args.gangs} x 8 pods x 8 GPUs)", flush=True)
                results["railnet-gangs"] = gang_phase(cluster, args.gangs, railnet.pid, args.timeout, metrics_port)
                print(f"    {results['railnet-gangs']}", flush=True)
        finally:
            railnet.terminate()
            try:
                railnet.wait(30)
            except subprocess.TimeoutExpired:
                print("    railnet scheduler did not exit within 30 s of SIGTERM; killed", flush=True)
                railnet.kill()
                railnet.wait(10)
            log.close()
        if "kube-backlog" in results and "railnet-backlog" in results:
            kb, rb = results["kube-backlog"]["bind_pods_per_s"], results["railnet-backlog"]["bind_pods_per_s"]
            results["backlog_ratio_railnet_over_kube"] = round(rb / kb, 2)
        if "kube-arrival" in results and "railnet-arrival" in results:
            ka, ra = results["kube-arrival"]["latency_p99_s"], results["railnet-arrival"]["latency_p99_s"]
            results["arrival_p99_ratio_kube_over_railnet"] = round(ka / ra, 2) if ra else None
        results["load_at_end"] = os.getloadavg()[0]
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
