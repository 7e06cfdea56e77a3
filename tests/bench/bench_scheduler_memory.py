"""Scheduler memory at 5,000 nodes and 50,000 pods: peak RSS of ``railnet scheduler``'s cache + model.

    .venv/bin/python tests/bench/bench_scheduler_memory.py [--nodes 5000] [--pods 50000] [--path both]

No API server: creating 50,000 pods through the dev cluster's kube-apiserver on this machine would
take longer than the measurement is worth, so the script feeds the scheduler cache
(``scheduler.live.cache.SchedulerCache``) the JSON objects its reflectors would hand it, through
the same entry points the reflectors call, and then builds the core's ``Cluster`` (``rebuild``,
what the scheduling loop does before its first cycle):

- nodes: ``railnet.dev.devcluster.NodeSet.manifest`` (the kwok node objects the dev cluster
  creates; hgx-h100 counts: 8 GPUs + 8 RoCE NICs) plus the fields the API server and kwok add
  (uid, resourceVersion, creationTimestamp, conditions, nodeInfo);
- NodeTopology: ``railnet.dev.kwok_topology.topology_object`` (the hgx-h100 fixture's discovered
  topology), one per node;
- pods: API-server-shaped pods (metadata with uid, resourceVersion, a managedFields entry;
  spec with one container asking 1 ``nvidia.com/gpu`` + 1 ``rdma/roce``, the default tolerations;
  status). ``--bound`` of them (default: every GPU of the cluster, 8 per node) are bound by
  railnet with the ``railnet.io/allocation`` annotation the binder writes
  (``scheduler.live.allocation.build``); the rest wait (schedulerName railnet, no node).

Every object is serialised and parsed back with ``json.loads``, as the API client does. Two paths,
each in its own child process so their peaks do not mix:

- ``list``: a relist, as ``Reflector.relist`` does it: pages of 500 parsed into one list of all
  items, handed to ``replace_*`` at once (the startup peak: every parsed object is alive together);
- ``watch``: one ``ADDED`` event at a time to ``on_*`` (each parsed object dropped after its event).

Printed per path: RSS after imports (the interpreter, pydantic, kubernetes-free railnet modules),
after the nodes + topologies, after the pods, after ``rebuild``; the peak (VmHWM); and bytes per
pod = (RSS after rebuild - RSS after nodes) / pods.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PAGE = 500  # the reflector's list page size


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mib() -> float:
    gc.collect()
    return _status_kib("VmRSS") / 1024


def peak_mib() -> float:
    return _status_kib("VmHWM") / 1024


def node_object(nodes: Any, i: int) -> dict[str, Any]:
    obj = nodes.manifest(i)
    name = obj["metadata"]["name"]
    obj["metadata"].update(
        uid=f"00000000-0000-4000-8000-{i:012d}",
        resourceVersion=str(1000 + i),
        creationTimestamp="2026-01-01T00:00:00Z",
    )
    obj["status"].update(
        conditions=[
            {
                "type": t,
                "status": s,
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "reason": r,
                "message": m,
            }
            for t, s, r, m in (
                ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                (
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            )
        ],
        nodeInfo={
            "architecture": "amd64",
            "kubeletVersion": "fake",
            "kubeProxyVersion": "fake",
            "operatingSystem": "linux",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": "",
            "osImage": "",
            "containerRuntimeVersion": "",
        },
        phase="Running",
    )
    assert obj["metadata"]["name"] == name
    return obj


def pod_object(i: int, node: str | None, annotation: str | None) -> dict[str, Any]:
    name = f"bench-{i:06d}"
    devices = {"nvidia.com/gpu": "1", "rdma/roce": "1"}
    meta: dict[str, Any] = {
        "name": name,
        "namespace": f"team-{i % 50:02d}",
        "uid": f"10000000-0000-4000-8000-{i:012d}",
        "resourceVersion": str(100_000 + i),
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": {"app": "bench", "job": f"job-{i // 8}"},
        "managedFields": [
            {
                "manager": "python-requests",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-01-01T00:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:job": {}}},
                    "f:spec": {
                        "f:containers": {
                            'k:{"name":"main"}': {
                                ".": {},
                                "f:image": {},
                                "f:name": {},
                                "f:resources": {".": {}, "f:limits": {}, "f:requests": {}},
                            }
                        },
                        "f:schedulerName": {},
                    },
                },
            }
        ],
    }
    if annotation:
        meta["annotations"] = {"railnet.io/allocation": annotation}
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": "registry.k8s.io/pause:3.10",
                "imagePullPolicy": "IfNotPresent",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi", **devices}, "limits": devices},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }
        ],
        "schedulerName": "railnet",
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": True,
        "priority": 0,
        "preemptionPolicy": "PreemptLowerPriority",
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
    }
    status: dict[str, Any] = {"phase": "Pending", "qosClass": "Burstable"}
    if node:
        spec["nodeName"] = node
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def measure(path: str, node_count: int, pod_count: int, bound: int) -> dict[str, Any]:
    from railnet.dev import kwok_topology
    from scheduler.live.allocation import build
    from scheduler.live.cache import SchedulerCache
    from scheduler.model import Allocation

    spec = kwok_topology.fixture_spec("hgx-h100")
    nodes = kwok_topology.node_set("bench-node-", node_count)
    names = nodes.names()
    gpus_per_node = len(spec["gpus"])
    rail_nic = [min(range(len(row)), key=lambda k: row[k]) for row in spec["gpuNic"]]  # GPU g's nearest NIC
    gc.collect()
    out: dict[str, Any] = {"path": path, "nodes": node_count, "pods": pod_count, "bound": bound}
    out["rss_imports_mib"] = rss_mib()
    cache = SchedulerCache()
    started = time.perf_counter()

    def wire(obj: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(obj))

    def paged(make: Any, count: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for first in range(0, count, PAGE):
            page = {"kind": "List", "items": [make(i) for i in range(first, min(count, first + PAGE))]}
            items += json.loads(json.dumps(page))["items"]
        return items

    def make_node(i: int) -> dict[str, Any]:
        return node_object(nodes, i)

    def make_topology(i: int) -> dict[str, Any]:
        obj = kwok_topology.topology_object(names[i])
        obj["metadata"].update(uid=f"20000000-0000-4000-8000-{i:012d}", resourceVersion=str(9000 + i))
        return obj

    def make_pod(i: int) -> dict[str, Any]:
        if i >= bound:
            return pod_object(i, None, None)
        node, gpu = divmod(i, gpus_per_node)
        name = names[node % node_count]
        nic = rail_nic[gpu]
        alloc = Allocation(f"pod-{i}", node, 100, 128, (gpu,), 1000, (nic,), ((gpu, nic),))
        return pod_object(i, name, build(alloc, name, spec).to_annotation())

    if path == "list":
        items = paged(make_node, node_count)
        cache.replace_nodes(items)
        del items
        items = paged(make_topology, node_count)
        cache.replace_topologies(items)
        del items
    else:
        for i in range(node_count):
            cache.on_node("ADDED", wire(make_node(i)))
        for i in range(node_count):
            cache.on_topology("ADDED", wire(make_topology(i)))
    out["rss_nodes_mib"] = rss_mib()
    if path == "list":
        items = paged(make_pod, pod_count)
        out["rss_list_held_mib"] = rss_mib()  # the relist's parsed items, all alive at once
        cache.replace_pods(items)
        del items
    else:
        for i in range(pod_count):
            cache.on_pod("ADDED", wire(make_pod(i)))
    out["rss_pods_mib"] = rss_mib()
    cache.rebuild()
    out["seconds"] = time.perf_counter() - started
    out["rss_rebuilt_mib"] = rss_mib()
    out["peak_mib"] = peak_mib()
    held = len(cache.cluster.allocations)
    out["ledger_allocations"] = held
    out["waiting"] = len(cache.waiting)
    out["gpus_allocated"] = sum(len(a.gpus) for a in cache.cluster.allocations.values())
    if held != bound or out["waiting"] != pod_count - bound:
        raise SystemExit(
            f"cache holds {held} allocations and {out['waiting']} waiting pods, "
            f"expected {bound} and {pod_count - bound}"
        )
    out["bytes_per_pod"] = (out["rss_rebuilt_mib"] - out["rss_nodes_mib"]) * 1024 * 1024 / pod_count
    out["bytes_per_node"] = (out["rss_nodes_mib"] - out["rss_imports_mib"]) * 1024 * 1024 / node_count
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="scheduler cache memory at N nodes and M pods")
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=50_000)
    parser.add_argument(
        "--bound",
        type=int,
        default=None,
        help="pods bound by railnet with the allocation annotation (default: min(pods, 8 x nodes))",
    )
    parser.add_argument("--path", choices=("list", "watch", "both"), default="both")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bound = min(args.pods, 8 * args.nodes) if args.bound is None else args.bound
    if args.child:
        print(json.dumps(measure(args.path, args.nodes, args.pods, bound)))
        return 0
    paths = ("list", "watch") if args.path == "both" else (args.path,)
    results = []
    for path in paths:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--path",
            path,
            "--nodes",
            str(args.nodes),
            "--pods",
            str(args.pods),
            "--bound",
            str(bound),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if done.returncode:
            sys.stderr.write(done.stderr)
            return done.returncode
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"scheduler cache memory (python {sys.version.split()[0]}, no API server: watch/list JSON fed "
        f"to SchedulerCache), {args.nodes:,} nodes with NodeTopology, {args.pods:,} pods "
        f"({bound:,} bound with the allocation annotation, {args.pods - bound:,} waiting)"
    )
    print()
    print(
        "| path | RSS after imports MiB | + nodes & topologies | relist items held | + pods | after rebuild "
        "| peak (VmHWM) MiB | bytes / pod | bytes / node | feed + rebuild s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        held = f"{r['rss_list_held_mib']:.0f}" if "rss_list_held_mib" in r else "-"
        print(
            f"| {r['path']} | {r['rss_imports_mib']:.0f} | {r['rss_nodes_mib']:.0f} | {held} | "
            f"{r['rss_pods_mib']:.0f} | {r['rss_rebuilt_mib']:.0f} | {r['peak_mib']:.0f} | "
            f"{r['bytes_per_pod']:,.0f} | {r['bytes_per_node']:,.0f} | {r['seconds']:.1f} |"
        )
    print()
    print(
        "bytes / pod = (RSS after rebuild - RSS after nodes) / pods; bytes / node = "
        "(RSS after nodes - RSS after imports) / nodes. Ledger check: "
        + ", ".join(
            f"{r['path']}: {r['ledger_allocations']:,} allocations, {r['waiting']:,} waiting, "
            f"{r['gpus_allocated']:,} GPUs"
            for r in results
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
