"""DRA claims for 1 GPU + 1 RDMA NIC: railnet's scheduler vs kube-scheduler, same cluster, same run.

    .venv/bin/python tests/bench/bench_dra_scheduler.py [--nodes 1000] [--pods 4000] [--topology shared-roots|hgx-h100]
        [--churn 0.5] [--seed 1] [--gpu-only 0.25] [--json]

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
the same PCIe switch.

Churn (``--churn FRACTION``, default 0.5, 0 = off): on an empty cluster filled in order kube-scheduler's
first fit lands on the same switch too, so after the fill a seeded random fraction (``--seed``) of the
phase's pods -- the same pods by index for both schedulers -- is force-deleted, their claims waited out,
and as many new pods are created (scheduler paused again until their claims exist). For this refill:
pods/s, the same-switch share of the new pods' claims, and how many same-switch GPU+NIC pairs were free
just before it (per node and switch, min(free GPUs, free NICs) from the claims' allocations), so
``same_switch_possible_share`` = min(1, free pairs / refill pods) is what "100 % whenever one is free"
is judged against. The pods are force-deleted and their claims waited out before the next phase.

Mixed pods (``--gpu-only FRACTION``): both drivers list GPU k and NIC k in the same order, so with only
GPU + NIC pods a first fit keeps "GPU k taken exactly when NIC k is" and stays on one switch by luck. In a
real cluster some pods take a GPU alone; a seeded fraction of the pods (the same indices in both turns)
asks for a GPU only, and the same-switch share is counted over the GPU + NIC pods.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
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


def template(constrained: bool, with_nic: bool = True) -> dict[str, Any]:
    """`pair`: one GPU + one NIC (kube-scheduler gets matchAttribute on pcieRoot); `gpu`: a GPU only."""
    requests = [{"name": "gpu", "exactly": {"deviceClassName": fixture_gpu.DRIVER}}]
    if with_nic:
        requests.append({"name": "nic", "exactly": {"deviceClassName": NIC}})
    constraints = [{"requests": ["gpu", "nic"], "matchAttribute": "resource.kubernetes.io/pcieRoot"}] \
        if constrained and with_nic else []
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": "pair" if with_nic else "gpu"},
            "spec": {"spec": {"devices": {"requests": requests, "constraints": constraints}}}}


def pod(name: str, scheduler: str | None, tmpl: str = "pair") -> dict[str, Any]:
    spec: dict[str, Any] = {"resourceClaims": [{"name": "devs", "resourceClaimTemplateName": tmpl}],
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


def claim_devices(cluster: DevCluster, ns: str) -> list[tuple[str, dict[str, tuple[str, str, str]]]]:
    """(pod name, request -> (driver, pool = node, device)) of every allocated claim in ``ns``."""
    out = []
    for claim in cluster.api().get(f"{RES}/namespaces/{ns}/resourceclaims")["items"]:
        results = ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []
        owner = next((o["name"] for o in claim["metadata"].get("ownerReferences") or [] if o.get("kind") == "Pod"), "")
        out.append((owner, {r["request"]: (r["driver"], r["pool"], r["device"]) for r in results}))
    return out


def same_switch_share(cluster: DevCluster, ns: str, switches: dict[tuple[str, str], str],
                      pods: set[str] | None = None) -> tuple[float, int]:
    """Share of the claims (of ``pods`` only, if given) whose GPU and NIC sit under one PCIe switch."""
    same = total = 0
    for owner, by in claim_devices(cluster, ns):
        if pods is not None and owner not in pods:
            continue
        if "gpu" in by and "nic" in by:
            gpu, nic = switches.get(by["gpu"][::2]), switches.get(by["nic"][::2])
            total += 1
            same += bool(gpu) and gpu == nic
    return (same / total if total else 0.0), total


def free_switch_pairs(cluster: DevCluster, ns: str, nodes: list[str], switches: dict[tuple[str, str], str]) -> int:
    """Same-switch GPU+NIC pairs free now: per node and switch, min(free GPUs, free NICs) (NICs taken whole)."""
    used: dict[str, set[tuple[str, str]]] = {}
    for _, by in claim_devices(cluster, ns):
        for driver, node, device in by.values():
            used.setdefault(node, set()).add((driver, device))
    pairs = 0
    for node in nodes:
        taken = used.get(node, set())
        gpus: dict[str, int] = {}
        nics: dict[str, int] = {}
        for (driver, device), switch in switches.items():
            if switch and (driver, device) not in taken:
                side = gpus if driver == fixture_gpu.DRIVER else nics
                side[switch] = side.get(switch, 0) + 1
        pairs += sum(min(n, nics.get(sw, 0)) for sw, n in gpus.items())
    return pairs


def delete_some(cluster: DevCluster, ns: str, names: list[str], workers: int = 16) -> None:
    """Force-delete ``names`` (not the whole namespace, as ``delete_all`` waits for) from 16 threads."""

    def delete(name: str) -> None:
        status, answer = cluster.api().request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}?gracePeriodSeconds=0")
        assert status in (200, 202, 404), answer

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(delete, names))


def wait_until(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def backlog(cluster: DevCluster, name: str, pid: int, bodies: list[dict[str, Any]], claims: int,
            bound_total: int, timeout: float) -> tuple[dict[str, Any], list[str]]:
    """Create ``bodies`` with the scheduler paused until ``claims`` claims exist, resume, time the binds."""
    follower = Follower(cluster, name, bound_total)
    follower.start()
    follower.ready.wait(30)
    os.kill(pid, signal.SIGSTOP)
    try:
        t_create = time.monotonic()
        created = create(cluster, name, bodies)
        wait_until(lambda: count_claims(cluster, name) >= claims, timeout, f"{name}: claims not made")
        claims_s = time.monotonic() - t_create
    finally:
        t0 = time.monotonic()
        os.kill(pid, signal.SIGCONT)
    finished = follower.done.wait(timeout)
    follower.close()
    mine = {b["metadata"]["name"] for b in bodies}
    stamps = [t for n, t in follower.bound_at.items() if n in mine]
    bound = len(stamps)  # on a timeout: the rate over what was bound (reported as such)
    last = max(stamps) if finished and stamps else time.monotonic()
    return ({"all_bound_s": round(last - t0, 2), "bind_pods_per_s": round(bound / (last - t0), 1),
             "bound": bound, "timed_out": not finished, "create_and_claims_s": round(claims_s, 1)}, list(created))


def phase(cluster: DevCluster, name: str, sched: str, pid: int, pods: int, switches: dict[tuple[str, str], str],
          timeout: float, churn: float = 0.0, seed: int = 1, nodes: list[str] | None = None,
          gpu_only: float = 0.0) -> dict[str, Any]:
    create_namespace(cluster, name)
    for with_nic in (True, False):
        status, answer = cluster.api().request("POST", f"{RES}/namespaces/{name}/resourceclaimtemplates",
                                               template(constrained=sched == "kube", with_nic=with_nic))
        assert status == 201, answer
    scheduler = "railnet" if sched == "railnet" else None
    # the same pods ask for a GPU only in both schedulers' turns (a seeded choice per pod index): a GPU taken
    # alone breaks the "GPU i with NIC i" order a first fit would otherwise keep
    kinds = random.Random(seed + 1)
    tmpl = ["gpu" if kinds.random() < gpu_only else "pair" for _ in range(pods)]
    bodies = [pod(f"p-{i:05d}", scheduler, tmpl[i]) for i in range(pods)]
    out, created = backlog(cluster, name, pid, bodies, pods, pods, timeout)
    share, counted = same_switch_share(cluster, name, switches)
    out.update(same_switch_share=round(share, 4), claims_counted=counted)
    alive = list(created)
    try:
        k = round(churn * pods)
        if k and not out["timed_out"]:
            victims = [bodies[i]["metadata"]["name"] for i in sorted(random.Random(seed).sample(range(pods), k))]
            t_del = time.monotonic()
            delete_some(cluster, name, victims)
            wait_until(lambda: count_claims(cluster, name) == pods - k, timeout, f"{name}: churned claims not deleted")
            alive = [n for n in alive if n not in set(victims)]
            churn_delete_s = round(time.monotonic() - t_del, 1)
            free = free_switch_pairs(cluster, name, nodes or [], switches)
            refill = [pod(f"r-{i:05d}", scheduler, "gpu" if kinds.random() < gpu_only else "pair") for i in range(k)]
            res, again = backlog(cluster, name, pid, refill, pods, pods, timeout)
            alive += again
            share, counted = same_switch_share(cluster, name, switches, set(again))
            res.update(pods=k, delete_s=churn_delete_s, free_same_switch_pairs_before=free,
                       same_switch_possible_share=round(min(1.0, free / k), 4),
                       same_switch_share=round(share, 4), claims_counted=counted)
            out["churn"] = res
    finally:
        t_del = time.monotonic()
        delete_all(cluster, name, alive, timeout)
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
    parser.add_argument("--churn", type=float, default=0.5,
                        help="fraction of each phase's pods deleted and recreated after the fill (0 = off)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the churned pods (same indices for both)")
    parser.add_argument("--gpu-only", type=float, default=0.0, metavar="FRACTION",
                        help="fraction of the pods whose claim asks for a GPU only (the same pods in both turns); the "
                             "same-switch share counts the GPU + NIC pods")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pods = args.pods or 4 * args.nodes

    k8sbin.build()
    print(f"==> DRA bench: {args.nodes} kwok nodes ({args.topology}), {pods} pods per phase (1 GPU + 1 NIC claim; "
          f"{args.gpu_only:.0%} of them a GPU only), "
          f"kube-scheduler {k8sbin.KUBERNETES_VERSION} (matchAttribute pcieRoot) vs railnet scheduler, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    spec = kwok_topology.fixture_spec("hgx-h100")
    if args.topology == "shared-roots":
        spec = fixture_gpu.shared_roots(spec)
    switches = switch_of(spec)
    options = Options(node_lease_seconds=200, kwok_parallelism=16, kwok_log_level="WARN")
    results: dict[str, Any] = {"nodes": args.nodes, "pods_per_phase": pods, "topology": args.topology,
                               "churn": args.churn, "seed": args.seed, "gpu_only": args.gpu_only,
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
                results[sched] = phase(cluster, f"dra-{sched}", sched, pids[sched], pods, switches, args.timeout,
                                        churn=args.churn, seed=args.seed, nodes=names, gpu_only=args.gpu_only)
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
            if "churn" in results["kube"] and "churn" in results["railnet"]:
                results["churn_pods_per_s_ratio_railnet_over_kube"] = round(
                    results["railnet"]["churn"]["bind_pods_per_s"] / results["kube"]["churn"]["bind_pods_per_s"], 2)
        results["load_at_end"] = os.getloadavg()[0]
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))
    if not args.json:
        for sched in ("kube", "railnet"):
            r = results.get(sched)
            if r:
                c = r.get("churn") or {}
                print(f"{sched}: fill {r['bind_pods_per_s']} pods/s, same switch {r['same_switch_share']:.1%}"
                      + (f"; churn refill of {c['pods']}: {c['bind_pods_per_s']} pods/s, same switch "
                         f"{c['same_switch_share']:.1%} (possible {c['same_switch_possible_share']:.1%})" if c else ""))
        for key in ("pods_per_s_ratio_railnet_over_kube", "churn_pods_per_s_ratio_railnet_over_kube"):
            if key in results:
                print(f"{key}: {results[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
