"""Cluster IPAM: railnet's cluster store vs whereabouts v0.9.2 on the same API server, plus railnet's embedded pool.

    .venv/bin/python tests/bench/bench_ipam_cluster.py [--per-node 100] [--whereabouts-per-node N] [--json]

One dev control plane (etcd + kube-apiserver from railnet.dev.devcluster) serves both cluster stores in
the same run. 10 "nodes" x `--per-node` ADDs, the 10 callers concurrent, each caller sequential on its own
node (as one kubelet per node would be), then the same number of DELs. Every call is an exec of the
plugin binary exactly as a runtime does it (CNI_* environment, config on stdin):
* railnet cluster: the railnet-ipam shim -> one railnet agent per node (own node name and state dir,
  --kubeconfig) -> IPPool/IPPoolBlock objects;
* whereabouts: its binary (built from its Go module by `python -m railnet.dev.peers build`), its CRDs
  installed from the same module, NODENAME per node, the admin kubeconfig;
* railnet embedded: the shim -> one agent, the pool from its pools dir (SQLite only, no API server).
API requests per ADD: the kube-apiserver's `apiserver_request_total` before and after, counting the
resources an IPAM touches (groups railnet.io, whereabouts.cni.cncf.io, coordination.k8s.io; GET/LIST/
WATCH of nodes and pods), divided by the ADDs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kubernetes import client, config  # noqa: E402
from kubernetes.dynamic import DynamicClient  # noqa: E402

from railnet.dev import k8sbin, peers  # noqa: E402
from railnet.dev.devcluster import DevCluster, NodeSet, running_cluster  # noqa: E402
from railnet.dev.lab import AgentProcess, PluginCall, ip, run_plugin  # noqa: E402
from tests.kube import kubeutil  # noqa: E402
from tests.kube.ipam_agents import Nodes, conf, pool  # noqa: E402

NODES = 10
_METRIC = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$')
_IPAM_GROUPS = {"railnet.io", "whereabouts.cni.cncf.io", "coordination.k8s.io"}


def request_counts(cluster: DevCluster) -> dict[str, float]:
    status, text = cluster.api().request("GET", "/metrics", timeout=30)
    assert status == 200, text
    out: dict[str, float] = {}
    for line in str(text).splitlines():
        m = _METRIC.match(line)
        if m:
            out[m["labels"]] = float(m["value"])
    return out


def ipam_requests(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    by: dict[str, int] = {}
    for labels, value in after.items():
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        core_read = lab.get("group") == "" and lab.get("resource") in ("nodes", "pods") and \
            lab.get("verb") in ("GET", "LIST", "WATCH")
        if lab.get("group") in _IPAM_GROUPS or core_read:
            delta = int(value - before.get(labels, 0.0))
            if delta:
                key = f"{lab.get('verb')} {lab.get('resource')}{'/' + lab['subresource'] if lab.get('subresource') else ''}"
                by[key] = by.get(key, 0) + delta
    return by


def run_phase(callers: int, per_caller: int, call: Callable[[int, int], PluginCall]) -> tuple[float, list[PluginCall]]:
    """`callers` threads, each making `per_caller` calls one after the other; wall seconds and every call."""
    results: list[list[PluginCall]] = [[] for _ in range(callers)]
    start = threading.Barrier(callers + 1)

    def caller(i: int) -> None:
        start.wait()
        for j in range(per_caller):
            results[i].append(call(i, j))

    with ThreadPoolExecutor(callers) as ex:
        futures = [ex.submit(caller, i) for i in range(callers)]
        start.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - t0
    return wall, [c for r in results for c in r]


def summarize(name: str, adds: tuple[float, list[PluginCall]], dels: tuple[float, list[PluginCall]],
              requests: dict[str, int] | None) -> dict[str, Any]:
    wall, calls = adds
    ok = [c for c in calls if c.ok and c.output and "ips" in c.output]
    addrs = [c.output["ips"][0]["address"] for c in ok if c.output]
    lat = sorted(c.seconds * 1e3 for c in calls)
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * len(lat))) - 1)]
    row: dict[str, Any] = {
        "store": name, "adds": len(calls), "add_failures": len(calls) - len(ok), "duplicates": len(addrs) - len(set(addrs)),
        "add_wall_s": round(wall, 2), "adds_per_s": round(len(calls) / wall, 1),
        "add_p50_ms": round(p50, 1), "add_p99_ms": round(p99, 1), "p99_over_p50": round(p99 / p50, 2),
        "del_wall_s": round(dels[0], 2), "del_failures": sum(1 for c in dels[1] if not c.ok),
    }
    if requests is not None:
        total = sum(requests.values())
        row["api_requests"] = total
        row["api_requests_per_add"] = round(total / max(1, len(calls)), 2)
        row["api_requests_by_kind"] = dict(sorted(requests.items(), key=lambda kv: -kv[1]))
    failed = [c for c in calls if not c.ok][:2]
    if failed:
        row["first_failures"] = [str(c.output)[:300] for c in failed]
    return row


def bench_railnet_cluster(cluster: DevCluster, core: client.CoreV1Api, custom: client.CustomObjectsApi,
                          per_node: int) -> dict[str, Any]:
    nodes = Nodes(cluster.kubeconfig, core, NODES, grace=30.0).start()
    try:
        with pool(custom, "bench-cluster", {"subnet": "10.220.0.0/18", "blockSize": 26}) as name:
            for i in range(NODES):  # steady state: each agent has seen the pool and holds a block
                assert nodes.call(i, "ADD", name, "warm-up").ok and nodes.call(i, "DEL", name, "warm-up").ok

            def pod(i: int, j: int) -> str:
                return f"K8S_POD_NAMESPACE=bench;K8S_POD_NAME=rn-{i}-{j};K8S_POD_UID=uid-{i}-{j}"

            before = request_counts(cluster)
            adds = run_phase(NODES, per_node, lambda i, j: nodes.call(i, "ADD", name, f"rn-{i}-{j}", args=pod(i, j)))
            requests = ipam_requests(before, request_counts(cluster))
            dels = run_phase(NODES, per_node, lambda i, j: nodes.call(i, "DEL", name, f"rn-{i}-{j}", args=pod(i, j)))
            return summarize("railnet cluster (IPPool CRDs, 10 agents)", adds, dels, requests)
    finally:
        nodes.close()


def bench_railnet_embedded(per_node: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="railnet-bench-ipam-"))
    (tmp / "pools").mkdir()
    (tmp / "pools" / "bench.json").write_text(json.dumps({"subnet": "10.221.0.0/18"}))
    from cni.install import install
    install(tmp / "bin", "auto")
    agent = AgentProcess(tmp / "agent", tmp / "pools")
    agent.start()
    try:
        def call(cmd: str, i: int, j: int) -> PluginCall:
            return run_plugin(tmp / "bin" / "railnet-ipam", cmd, conf("bench"), container_id=f"em-{i}-{j}",
                              ifname="net1", netns="/proc/self/ns/net", env=agent.env())

        adds = run_phase(NODES, per_node, lambda i, j: call("ADD", i, j))
        dels = run_phase(NODES, per_node, lambda i, j: call("DEL", i, j))
        return summarize("railnet embedded (SQLite, 1 agent)", adds, dels, None)
    finally:
        agent.stop()


def bench_whereabouts(cluster: DevCluster, dyn: DynamicClient, per_node: int) -> dict[str, Any]:
    binary = peers.binary("whereabouts")
    crds = [peers.asset("whereabouts", Path(a).name) for a in peers.COMPONENTS[0].assets]
    kubeutil.apply(dyn, kubeutil.load(crds))
    # its flat file, as the whereabouts DaemonSet installs it (whereabouts.d/whereabouts.conf)
    flat = Path(tempfile.mkdtemp(prefix="railnet-bench-wb-")) / "whereabouts.conf"
    flat.write_text(json.dumps({"datastore": "kubernetes", "kubernetes": {"kubeconfig": str(cluster.kubeconfig)},
                                "log_level": "error"}))
    netconf = {"cniVersion": "0.3.1", "name": "wb-bench", "type": "macvlan",
               "ipam": {"type": "whereabouts", "range": "10.222.0.0/18", "configuration_path": str(flat)}}

    # libcni's skel refuses a CNI_NETNS that is the plugin's own netns: one empty netns stands in for the pods
    netns = f"rnbench-wb-{os.getpid()}"
    ip("netns", "add", netns)

    def call(cmd: str, i: int, j: int) -> PluginCall:
        return run_plugin(binary, cmd, netconf, container_id=f"wb-{i}-{j}", ifname="net1",
                          netns=f"/run/netns/{netns}",
                          env={"NODENAME": f"wb-node-{i}"},
                          args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=wb-{i}-{j};K8S_POD_UID=uid-{i}-{j}")

    try:
        before = request_counts(cluster)
        adds = run_phase(NODES, per_node, lambda i, j: call("ADD", i, j))
        requests = ipam_requests(before, request_counts(cluster))
        dels = run_phase(NODES, per_node, lambda i, j: call("DEL", i, j))
    finally:
        ip("netns", "del", netns)
    return summarize(f"whereabouts {peers.WHEREABOUTS_VERSION} (kubernetes datastore)", adds, dels, requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-node", type=int, default=100, help="ADDs per node (10 nodes)")
    parser.add_argument("--whereabouts-per-node", type=int, default=None,
                        help="fewer ADDs per node for whereabouts only (it takes minutes for 1,000)")
    parser.add_argument("--skip-whereabouts", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    k8sbin.build()
    if not args.skip_whereabouts:
        peers.build()
    print(f"==> bench ipam: {NODES} nodes x {args.per_node} ADDs, then DELs; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rows: list[dict[str, Any]] = []
    rows.append(bench_railnet_embedded(args.per_node))
    print(json.dumps(rows[-1]), flush=True)
    with running_cluster(f"bench-ipam-{os.getpid()}", nodes=NodeSet(count=0)) as cluster:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core, custom, dyn = client.CoreV1Api(api), client.CustomObjectsApi(api), DynamicClient(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="bench")))
        kubeutil.apply(dyn, kubeutil.load(sorted((kubeutil.DEPLOY / "crds").glob("*.railnet.io.yaml"))))
        rows.append(bench_railnet_cluster(cluster, core, custom, args.per_node))
        print(json.dumps(rows[-1]), flush=True)
        if not args.skip_whereabouts:
            rows.append(bench_whereabouts(cluster, dyn, args.whereabouts_per_node or args.per_node))
            print(json.dumps(rows[-1]), flush=True)
        api.close()
    if len(rows) == 3:
        ratio = rows[1]["adds_per_s"] / rows[2]["adds_per_s"]
        print(f"==> railnet cluster / whereabouts ADD throughput: {ratio:.0f}x", flush=True)
    print(f"==> load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        print(json.dumps(rows))
    else:
        keys = ["store", "adds", "add_failures", "duplicates", "add_wall_s", "adds_per_s", "add_p50_ms",
                "add_p99_ms", "p99_over_p50", "api_requests_per_add", "del_wall_s", "del_failures"]
        for row in rows:
            print("  " + "  ".join(f"{k}={row.get(k, '-')}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
