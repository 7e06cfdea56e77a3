"""kube-scheduler on the dev control plane: 1,000 kwok nodes, 5,000 pods created and bound.

    .venv/bin/python tests/bench/bench_kube_scheduler.py [--nodes 1000] [--pods 5000] [--json]

Starts its own dev cluster (owned by this process: it dies with it), registers the nodes, creates the
pods from 16 keep-alive connections and follows a watch until every pod is bound (spec.nodeName set),
then until every pod is Running (kwok). Reports wall times and pods/s. The peer in the same run is
the API server itself: pod creation throughput is the ceiling for binding throughput, so the
bind/create ratio says how close kube-scheduler keeps up with the arrival rate.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from railnet import k8sbin  # noqa: E402
from railnet.devcluster import DevCluster, NodeSet, Options, running_cluster  # noqa: E402

NAMESPACE = "bench"


def _ctx(cluster: DevCluster) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    return ctx


def _pod(i: int) -> dict[str, Any]:
    requests = {"cpu": "100m", "memory": "128Mi", "nvidia.com/gpu": "1", "rdma/roce": "1"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{i:05d}", "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": requests, "limits": {
                                     "nvidia.com/gpu": "1", "rdma/roce": "1"}}}]},
    }


class Follower(threading.Thread):
    """Watches the namespace's pods and timestamps the moment each count is reached."""

    def __init__(self, cluster: DevCluster, total: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.total = cluster, total
        self.bound: set[str] = set()
        self.running: set[str] = set()
        self.all_bound_at: float | None = None
        self.all_running_at: float | None = None
        self.first_bound_at: float | None = None
        self.ready = threading.Event()
        self.reconnects = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _follow(self) -> None:
        # kube-apiserver closes a watch whose client falls behind (this thread parses every event
        # in Python), so resume from the last resourceVersion seen, and re-list after 410 Gone.
        port = self.cluster.state()["ports"]["apiserver"]
        ctx = _ctx(self.cluster)
        rv = ""
        self.reconnects = 0
        while self.all_running_at is None:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=600)
            if not rv:
                conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")
                listing = json.loads(conn.getresponse().read())
                for obj in listing["items"]:
                    self._see(obj)
                rv = listing["metadata"]["resourceVersion"]
            conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1&resourceVersion={rv}"
                                "&allowWatchBookmarks=true&timeoutSeconds=1800")
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
        name = obj["metadata"]["name"]
        now = time.monotonic()
        if obj["spec"].get("nodeName") and name not in self.bound:
            self.bound.add(name)
            self.first_bound_at = self.first_bound_at or now
            if len(self.bound) == self.total:
                self.all_bound_at = now
        if obj.get("status", {}).get("phase") == "Running" and name not in self.running:
            self.running.add(name)
            if len(self.running) == self.total:
                self.all_running_at = now


def create_pods(cluster: DevCluster, total: int, workers: int = 16) -> None:
    port = cluster.state()["ports"]["apiserver"]
    ctx = _ctx(cluster)
    local = threading.local()

    def post(i: int) -> None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
        local.conn.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", json.dumps(_pod(i)),
                           {"Content-Type": "application/json", "Accept": "application/json"})
        resp = local.conn.getresponse()
        body = resp.read()
        if resp.status != 201:
            raise RuntimeError(f"creating pod {i}: HTTP {resp.status}: {body[:300]!r}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(post, range(total)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    args = parser.parse_args(argv)

    k8sbin.build()
    print(f"==> bench: {args.nodes} kwok nodes, {args.pods} pods, kube-scheduler {k8sbin.KUBERNETES_VERSION}, "
          f"{os.cpu_count()} CPUs", flush=True)
    # 1,000 nodes renewing 40 s leases would cost 100 writes/s on 2 cores; 200 s leases cost 20/s.
    options = Options(node_lease_seconds=200, kwok_parallelism=16)
    results: dict[str, Any] = {"nodes": args.nodes, "pods": args.pods, "kubernetes": k8sbin.KUBERNETES_VERSION,
                               "cpus": os.cpu_count()}
    t_up = time.monotonic()
    with running_cluster(f"bench-{os.getpid()}", nodes=NodeSet(count=0), options=options) as cluster:
        results["cluster_up_s"] = round(time.monotonic() - t_up, 2)
        t0 = time.monotonic()
        cluster.add_nodes(NodeSet(count=args.nodes, capacity={"cpu": "64", "memory": "512Gi", "pods": "110"}),
                          deadline=t0 + args.timeout)
        results["nodes_ready_s"] = round(time.monotonic() - t0, 2)

        api = cluster.api()
        api.request("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        deadline = time.monotonic() + 30
        while api.request("GET", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("no default ServiceAccount in the bench namespace")
            time.sleep(0.1)

        follower = Follower(cluster, args.pods)
        follower.start()
        follower.ready.wait(30)
        t_create, wall_create = time.monotonic(), time.time()
        create_pods(cluster, args.pods)
        created_s = time.monotonic() - t_create
        deadline = t_create + args.timeout
        while follower.all_running_at is None and follower.error is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if follower.error is not None:
            raise follower.error
        if follower.all_bound_at is None or follower.all_running_at is None:
            print(f"TIMEOUT: {len(follower.bound)} bound, {len(follower.running)} running", file=sys.stderr)
            return 1
        bound_s = follower.all_bound_at - t_create
        running_s = follower.all_running_at - t_create
        results.update(
            create_s=round(created_s, 2),
            create_pods_per_s=round(args.pods / created_s, 1),
            all_bound_s=round(bound_s, 2),
            bind_pods_per_s=round(args.pods / bound_s, 1),
            bind_vs_create_ratio=round(created_s / bound_s, 3),
            all_running_s=round(running_s, 2),
            running_pods_per_s=round(args.pods / running_s, 1),
        )
        # Every pod is on a distinct-enough node: kube-scheduler spread them (8 GPUs per node).
        per_node: dict[str, int] = {}
        last_scheduled = 0.0
        for item in api.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]:
            per_node[item["spec"]["nodeName"]] = per_node.get(item["spec"]["nodeName"], 0) + 1
            for cond in item["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "True":
                    stamp = datetime.datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00"))
                    last_scheduled = max(last_scheduled, stamp.timestamp())
        # The server's own PodScheduled timestamps (1 s resolution): independent of how fast this
        # process reads the watch.
        results["all_bound_server_s"] = round(last_scheduled - wall_create, 1)
        results["watch_reconnects"] = follower.reconnects
        results["nodes_used"] = len(per_node)
        results["max_pods_per_node"] = max(per_node.values())
    if args.json:
        print(json.dumps(results))
    else:
        width = max(map(len, results))
        for key, value in results.items():
            print(f"  {key:{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
