"""DRA claims for 1 GPU + 1 RDMA NIC: railnet's scheduler vs kube-scheduler, same cluster, same run.

    .venv/bin/python tests/bench/bench_dra_scheduler.py [--nodes 1000] [--pods 4000] [--topology shared-roots|hgx-h100] [--json]

kwok nodes with the hgx-h100 fixture (8 GPUs + 8 RoCE NICs), their NodeTopology, and fixture
ResourceSlices (``railnet.dev.fixture_gpu``: GPUs of ``gpu.fixture.railnet.io``, NICs of
``rdma.railnet.io`` with consumable bandwidth). ``--topology shared-roots`` (default) puts GPU/NIC
pairs 2k and 2k+1 under one root complex with a switch each, so the same root does not mean the
same switch (as KEP-6072 reports for real servers); ``hgx-h100`` keeps one switch per root.

Per scheduler, one backlog phase of ``--pods`` pods in a namespace of its own, each pod with one
claim from a ResourceClaimTemplate: kube-scheduler's template has ``constraints: [{requests: [gpu,
nic], matchAttribute: resource.kubernetes.io/pcieRoot}]``; railnet's has none (it ranks PCIe switch >
root > NUMA > socket itself). The scheduler is paused (SIGSTOP) while the pods are created and until
the controller manager has made every claim; pods bound per second from its resume to the last bind
is its throughput (after ``--timeout`` seconds: the rate over the pods bound so far, marked
``timed_out``). Then, from the claims' allocations, the share of pods whose GPU and NIC sit under
the same PCIe switch. The pods are force-deleted and their claims waited out before the next phase.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from netmanager.dra import slices  # noqa: E402
from railnet.dev import fixture_gpu, k8sbin, kwok_topology  # noqa: E402
from railnet.dev.devcluster import DevCluster, NodeSet, Options, running_cluster  # noqa: E402
from tests.bench.bench_kube_scheduler import create_namespace  # noqa: E402
from tests.bench.bench_railnet_scheduler import (  # noqa: E402
    Follower,
    _die_with_parent,
    _free_port,
    create,
    delete_all,
    wait_leading,
)

REPO = Path(__file__).resolve().parents[2]
RES = "/apis/resource.k8s.io/v1"
NIC = "rdma.railnet.io"


def template(constrained: bool) -> dict[str, Any]:
    requests = [{"name": "gpu", "exactly": {"deviceClassName": fixture_gpu.DRIVER}},
                {"name": "nic", "exactly": {"deviceClassName": NIC}}]
    constraints = [{"requests": ["gpu", "nic"], "matchAttribute": "resource.kubernetes.io/pcieRoot"}] if constrained else []
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": "pair"},
            "spec": {"spec": {"devices": {"requests": requests, "constraints": constraints}}}}


def pod(name: str, scheduler: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"resourceClaims": [{"name": "devs", "resourceClaimTemplateName": "pair"}],
                            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                                          "claims": [{"name": "devs"}]}}]}
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def count_claims(cluster: DevCluster, ns: str) -> int:
    items = cluster.api().get(f"{RES}/namespaces/{ns}/resourceclaims")["items"]
    return len(items)


def switch_of(spec: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(driver, device name) -> the PCIe switch above it (every node has the same fixture)."""
    out = {(fixture_gpu.DRIVER, f"gpu-{g['index']}"): g.get("pcieSwitch") or "" for g in spec["gpus"]}
    out.update({(NIC, slices.device_name(n["pciAddress"])): n.get("pcieSwitch") or "" for n in spec["nics"]})
    return out


def same_switch_share(cluster: DevCluster, ns: str, switches: dict[tuple[str, str], str]) -> tuple[float, int]:
    same = total = 0
    for claim in cluster.api().get(f"{RES}/namespaces/{ns}/resourceclaims")["items"]:
        results = ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []
        by = {r["request"]: switches.get((r["driver"], r["device"])) for r in results}
        if "gpu" in by and "nic" in by:
            total += 1
            same += bool(by["gpu"]) and by["gpu"] == by["nic"]
    return (same / total if total else 0.0), total


def wait_until(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def phase(cluster: DevCluster, name: str, sched: str, pid: int, pods: int, switches: dict[tuple[str, str], str],
          timeout: float) -> dict[str, Any]:
    create_namespace(cluster, name)
    status, answer = cluster.api().request("POST", f"{RES}/namespaces/{name}/resourceclaimtemplates",
                                           template(constrained=sched == "kube"))
    assert status == 201, answer
    follower = Follower(cluster, name, pods)
    follower.start()
    follower.ready.wait(30)
    bodies = [pod(f"p-{i:05d}", "railnet" if sched == "railnet" else None) for i in range(pods)]
    os.kill(pid, signal.SIGSTOP)
    try:
        t_create = time.monotonic()
        created = create(cluster, name, bodies)
        wait_until(lambda: count_claims(cluster, name) >= pods, timeout, f"{name}: claims not made")
        claims_s = time.monotonic() - t_create
    finally:
        t0 = time.monotonic()
        os.kill(pid, signal.SIGCONT)
    finished = follower.done.wait(timeout)
    follower.close()
    bound = len(follower.bound_at)  # on a timeout: the rate over what was bound (reported as such)
    last = max(follower.bound_at.values()) if finished else time.monotonic()
    share, counted = same_switch_share(cluster, name, switches)
    out = {"all_bound_s": round(last - t0, 2), "bind_pods_per_s": round(bound / (last - t0), 1),
           "bound": bound, "timed_out": not finished,
           "same_switch_share": round(share, 4), "claims_counted": counted,
           "create_and_claims_s": round(claims_s, 1)}
    t_del = time.monotonic()
    delete_all(cluster, name, list(created), timeout)
    wait_until(lambda: count_claims(cluster, name) == 0, timeout, f"{name}: claims not deleted")
    out["delete_s"] = round(time.monotonic() - t_del, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=0, help="pods per phase (default: 4 per node, half the GPUs)")
    parser.add_argument("--topology", choices=("shared-roots", "hgx-h100"), default="shared-roots")
    parser.add_argument("--order", default="kube,railnet")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pods = args.pods or 4 * args.nodes

    k8sbin.build()
    print(f"==> DRA bench: {args.nodes} kwok nodes ({args.topology}), {pods} pods per phase (1 GPU + 1 NIC claim), "
          f"kube-scheduler {k8sbin.KUBERNETES_VERSION} (matchAttribute pcieRoot) vs railnet scheduler, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    spec = kwok_topology.fixture_spec("hgx-h100")
    if args.topology == "shared-roots":
        spec = fixture_gpu.shared_roots(spec)
    switches = switch_of(spec)
    options = Options(node_lease_seconds=200, kwok_parallelism=16, kwok_log_level="WARN")
    results: dict[str, Any] = {"nodes": args.nodes, "pods_per_phase": pods, "topology": args.topology,
                               "cpus": os.cpu_count(), "kubernetes": k8sbin.KUBERNETES_VERSION,
                               "load_at_start": os.getloadavg()[0]}
    with running_cluster(f"drabench-{os.getpid()}", nodes=NodeSet(count=0), options=options) as cluster:
        api = cluster.api()
        kwok_topology.install_crds(api)
        fixture_gpu.install_device_classes(api)
        t0 = time.monotonic()
        names = cluster.add_nodes(kwok_topology.node_set("kwok-node-", args.nodes), deadline=t0 + args.timeout)
        fixture_gpu.publish_topologies(api, names, spec)
        fixture_gpu.publish(api, names, spec=spec)
        results["nodes_ready_s"] = round(time.monotonic() - t0, 2)
        log = open(cluster.dir / "logs" / "railnet-scheduler.log", "wb")  # noqa: SIM115
        metrics_port = _free_port()
        railnet = subprocess.Popen(
            [sys.executable, "-m", "railnet.cli", "scheduler", f"--kubeconfig={cluster.kubeconfig}",
             "--log-level=warning", f"--metrics-port={metrics_port}"], cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            wait_leading(metrics_port, time.monotonic() + 120)
            pids = {"kube": int(cluster.state()["processes"]["kube-scheduler"]["pid"]), "railnet": railnet.pid}
            for sched in args.order.split(","):
                print(f"==> phase {sched}", flush=True)
                load = os.getloadavg()[0]
                results[sched] = phase(cluster, f"dra-{sched}", sched, pids[sched], pods, switches, args.timeout)
                results[sched].update(load_at_start=round(load, 2), load_at_end=round(os.getloadavg()[0], 2))
                print(f"    {results[sched]}", flush=True)
        finally:
            railnet.terminate()
            try:
                railnet.wait(30)
            except subprocess.TimeoutExpired:
                railnet.kill()
                railnet.wait(10)
            log.close()
        if "kube" in results and "railnet" in results:
            results["pods_per_s_ratio_railnet_over_kube"] = round(
                results["railnet"]["bind_pods_per_s"] / results["kube"]["bind_pods_per_s"], 2)
        results["load_at_end"] = os.getloadavg()[0]
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
