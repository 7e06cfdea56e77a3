"""BASELINE, not a railnet result: stock kube-scheduler on the dev control plane, 1,000 kwok nodes,
5,000 pods created and bound. No railnet code runs here; these numbers are the kube-scheduler
ceiling that railnet's scheduler will be compared against once it binds pods through the API.

    .venv/bin/python tests/bench/bench_kube_scheduler.py [--nodes 1000] [--pods 5000] [--json]

Starts its own dev cluster (owned by this process: it dies with it), registers the nodes, then runs
two phases of `--pods` pods each (every pod asks for 1 GPU + 1 RoCE NIC, 100m CPU, 128Mi):

- arrival: pods are created from 16 keep-alive connections while kube-scheduler runs; reports the
  time until every pod is bound (spec.nodeName) and Running (kwok). The peer measured in the same
  run is the API server's pod-creation rate: binding cannot be faster than pods arrive, so
  bind/create says how closely kube-scheduler keeps up.
- backlog: kube-scheduler is paused (SIGSTOP) while the pods are created, then resumed; the time
  until the last pod is bound is the scheduler's own throughput on a full queue.

Bind times are taken twice: from a watch in this process, and from the server's own PodScheduled
condition timestamps (1 s resolution), which do not depend on how fast Python reads the watch.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import http.client
import json
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from railnet.dev import k8sbin  # noqa: E402
from railnet.dev.devcluster import DevCluster, NodeSet, Options, running_cluster  # noqa: E402

GPUS_PER_NODE = 16  # room for both phases: 2 x 5,000 one-GPU pods on 1,000 nodes


def _ctx(cluster: DevCluster) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    return ctx


def _conn(cluster: DevCluster, timeout: float = 60) -> http.client.HTTPSConnection:
    port = cluster.state()["ports"]["apiserver"]
    return http.client.HTTPSConnection("127.0.0.1", port, context=_ctx(cluster), timeout=timeout)


def _pod(i: int) -> dict[str, Any]:
    devices = {"nvidia.com/gpu": "1", "rdma/roce": "1"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{i:05d}", "labels": {"app": "bench"}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi", **devices},
                        "limits": devices,
                    },
                }
            ]
        },
    }


class Follower(threading.Thread):
    """Follows one namespace's pods (list, then watch) and timestamps when all are bound / Running."""

    def __init__(self, cluster: DevCluster, namespace: str, total: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.namespace, self.total = cluster, namespace, total
        self.bound: set[str] = set()
        self.running: set[str] = set()
        self.all_bound_at: float | None = None
        self.all_running_at: float | None = None
        self.reconnects = 0
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # re-raised by the main thread
            self.error = exc

    def _follow(self) -> None:
        # kube-apiserver closes a watch whose client falls behind (this thread parses every event
        # in Python), so resume from the last resourceVersion seen, and re-list after 410 Gone.
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        rv = ""
        while self.all_running_at is None:
            conn = _conn(self.cluster, timeout=600)
            if not rv:
                conn.request("GET", path)
                listing = json.loads(conn.getresponse().read())
                for obj in listing["items"]:
                    self._see(obj)
                rv = listing["metadata"]["resourceVersion"]
            conn.request(
                "GET", f"{path}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1800"
            )
            resp = conn.getresponse()
            self.ready.set()
            while self.all_running_at is None:
                line = resp.readline()
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
        name, now = obj["metadata"]["name"], time.monotonic()
        if obj["spec"].get("nodeName") and name not in self.bound:
            self.bound.add(name)
            if len(self.bound) == self.total:
                self.all_bound_at = now
        if obj.get("status", {}).get("phase") == "Running" and name not in self.running:
            self.running.add(name)
            if len(self.running) == self.total:
                self.all_running_at = now

    def wait(self, deadline: float) -> None:
        while self.all_running_at is None and self.error is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.error is not None:
            raise self.error
        if self.all_bound_at is None or self.all_running_at is None:
            raise TimeoutError(
                f"{self.namespace}: {len(self.bound)} bound, {len(self.running)} Running of {self.total}"
            )


def create_namespace(cluster: DevCluster, name: str) -> None:
    api = cluster.api()
    api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while api.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no default ServiceAccount in namespace {name}")
        time.sleep(0.1)


def create_pods(cluster: DevCluster, namespace: str, total: int, workers: int = 16) -> None:
    local = threading.local()

    def post(i: int) -> None:
        if not hasattr(local, "conn"):
            local.conn = _conn(cluster)
        local.conn.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/pods",
            json.dumps(_pod(i)),
            {"Content-Type": "application/json", "Accept": "application/json"},
        )
        resp = local.conn.getresponse()
        body = resp.read()
        if resp.status != 201:
            raise RuntimeError(f"creating pod {i}: HTTP {resp.status}: {body[:300]!r}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(post, range(total)))


@contextlib.contextmanager
def scheduler_paused(cluster: DevCluster) -> Iterator[None]:
    pid = int(cluster.state()["processes"]["kube-scheduler"]["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def server_bind_times(cluster: DevCluster, namespace: str) -> tuple[float, dict[str, int]]:
    """(latest PodScheduled=True timestamp, pods per node) from the server's view."""
    last, per_node = 0.0, dict[str, int]()
    for item in cluster.api().get(f"/api/v1/namespaces/{namespace}/pods")["items"]:
        node = item["spec"]["nodeName"]
        per_node[node] = per_node.get(node, 0) + 1
        for cond in item["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "True":
                stamp = datetime.datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00"))
                last = max(last, stamp.timestamp())
    return last, per_node


def phase(cluster: DevCluster, name: str, pods: int, backlog: bool, timeout: float) -> dict[str, Any]:
    create_namespace(cluster, name)
    follower = Follower(cluster, name, pods)
    follower.start()
    follower.ready.wait(30)
    t0, wall0 = time.monotonic(), time.time()
    if backlog:
        with scheduler_paused(cluster):
            create_pods(cluster, name, pods)
            created = time.monotonic()
            t0, wall0 = time.monotonic(), time.time()  # the clock starts when the scheduler resumes
    else:
        create_pods(cluster, name, pods)
        created = time.monotonic()
    follower.wait(time.monotonic() + timeout)
    assert follower.all_bound_at is not None and follower.all_running_at is not None
    last_bound, per_node = server_bind_times(cluster, name)
    bound_s = follower.all_bound_at - t0
    out: dict[str, Any] = {}
    if not backlog:
        create_s = created - t0
        out.update(create_s=round(create_s, 2), create_pods_per_s=round(pods / create_s, 1))
    out.update(
        all_bound_s=round(bound_s, 2),
        bind_pods_per_s=round(pods / bound_s, 1),
        # timestamps have 1 s resolution: the last bind happened before stamp + 1 s
        all_bound_server_le_s=round(last_bound + 1 - wall0, 1),
        all_running_s=round(follower.all_running_at - t0, 2),
    )
    if not backlog:
        out["bind_vs_create_ratio"] = round((created - t0) / bound_s, 3)
    out.update(
        nodes_used=len(per_node),
        max_pods_per_node=max(per_node.values()),
        watch_reconnects=follower.reconnects,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5000, help="pods per phase")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--timeout", type=float, default=900, help="per-phase limit in seconds")
    args = parser.parse_args(argv)

    k8sbin.build()
    print(
        "==> BASELINE: stock kube-scheduler, no railnet code runs in this benchmark; the numbers are "
        "what later railnet scheduler work will be compared against",
        flush=True,
    )
    print(
        f"==> bench: {args.nodes} kwok nodes, {args.pods} pods per phase, kube-scheduler "
        f"{k8sbin.KUBERNETES_VERSION}, {os.cpu_count()} CPUs",
        flush=True,
    )
    # 1,000 nodes renewing 40 s leases would cost 100 writes/s on 2 cores; 200 s leases cost 20/s.
    options = Options(node_lease_seconds=200, kwok_parallelism=16, kwok_log_level="WARN")
    results: dict[str, Any] = {
        "what": "baseline: stock kube-scheduler, no railnet code",
        "nodes": args.nodes,
        "pods_per_phase": args.pods,
        "kubernetes": k8sbin.KUBERNETES_VERSION,
        "cpus": os.cpu_count(),
    }
    t_up = time.monotonic()
    with running_cluster(f"bench-{os.getpid()}", nodes=NodeSet(count=0), options=options) as cluster:
        results["cluster_up_s"] = round(time.monotonic() - t_up, 2)
        t0 = time.monotonic()
        gpus = str(GPUS_PER_NODE)
        cluster.add_nodes(
            NodeSet(count=args.nodes, capacity={"nvidia.com/gpu": gpus, "rdma/roce": gpus}),
            deadline=t0 + args.timeout,
        )
        results["nodes_ready_s"] = round(time.monotonic() - t0, 2)
        for name, backlog in (("arrival", False), ("backlog", True)):
            print(f"==> phase {name}", flush=True)
            results[name] = phase(cluster, f"bench-{name}", args.pods, backlog, args.timeout)
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            if isinstance(value, dict):
                print(f"  {key}:")
                for k, v in value.items():
                    print(f"    {k:22} {v}")
            else:
                print(f"  {key:24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
