"""KubeDL host-network mode (`kubedl.io/network-mode: host`) against the real API server and kwok:
no two pods on a node ever share a host port, Services forward their fixed port to the host port,
and a failed replica comes back on a new port with its Service retargeted."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections import Counter, defaultdict

from jobs import api, builder
from jobs.store import HOST_LISTENERS
from tests.kube import kubeutil
from tests.kube.test_jobs_support import (
    REPO,
    WAIT,
    Jobs,
    _die_with_parent,
    job_crds,
    jobs,
    replica,
    tf_config,
    tfjob,
)

__all__ = ["job_crds", "jobs"]  # fixtures
HOST = {api.NETWORK_MODE: "host"}


def host_port(pod: dict) -> int:  # type: ignore[type-arg]
    [port] = builder.declared_host_ports(pod["spec"])
    return port


def test_fifty_host_network_jobs_never_share_a_host_port_on_a_node(jobs: Jobs) -> None:
    # 100 replicas on the cluster's 4 nodes, 40 ports: every port is needed on ~3 nodes at once
    jobs.start("--hostnetwork-port-range=31000-31039", "--workers=8")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: jobs.create(tfjob(f"h{i:02d}", annotations=HOST, PS=replica("tensorflow", 1),
                                                  Worker=replica("tensorflow", 1))), range(50)))
    names = {f"h{i:02d}-{t}-0" for i in range(50) for t in ("ps", "worker")}
    pods = jobs.wait_running(names, timeout=90)
    by_node: dict[str, list[int]] = defaultdict(list)
    for name in names:
        pod = pods[name]
        port = host_port(pod)
        assert 31000 <= port <= 31039 and pod["spec"]["hostNetwork"] is True
        assert pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
        by_node[pod["spec"]["nodeName"]].append(port)
        own = tf_config(pod)["cluster"]["ps" if "-ps-" in name else "worker"][0]
        assert own.endswith(f":{port}")
    for node, held in by_node.items():
        assert len(held) == len(set(held)), f"{node} has a host port twice: {sorted(held)}"
    assert len(by_node) > 1
    holders = Counter(p for held in by_node.values() for p in held)
    assert max(holders.values()) <= 3  # least-used first: ceil(100 / 40), so 4 nodes always suffice
    services = kubeutil.wait_for(lambda: s if names <= set(s := jobs.services()) else None, WAIT, "100 Services")
    for name in names:
        [sp] = services[name]["spec"]["ports"]
        assert sp["port"] == 2222 and sp["targetPort"] == host_port(pods[name])
        assert services[name]["spec"].get("clusterIP") not in (None, "None")
    # peers see each other through the Services' fixed port
    assert tf_config(pods["h07-worker-0"])["cluster"]["ps"] == [f"h07-ps-0.{jobs.ns}.svc:2222"]


def test_fail_over_moves_to_a_new_port_and_retargets_the_service(jobs: Jobs) -> None:
    jobs.start("--hostnetwork-port-range=32000-32099")
    jobs.create(tfjob("fo", annotations=HOST, PS=replica("tensorflow", 1), Worker=replica("tensorflow", 2)))
    names = {"fo-ps-0", "fo-worker-0", "fo-worker-1"}
    before = jobs.wait_running(names)
    old_port = host_port(before["fo-worker-1"])
    jobs.end_pod("fo-worker-1", "Failed", 137)  # SIGKILL: retryable under ExitCode (KubeDL's TF default)
    after = jobs.wait_replaced("fo-worker-1", before["fo-worker-1"]["metadata"]["uid"])
    new_port = host_port(after["fo-worker-1"])
    assert new_port != old_port
    assert tf_config(after["fo-worker-1"])["cluster"]["worker"][1] == f"fo-worker-1.{jobs.ns}.svc:{new_port}"
    svc = kubeutil.wait_for(lambda: s if (s := jobs.services()["fo-worker-1"])["spec"]["ports"][0]["targetPort"]
                            == new_port else None, WAIT, "Service retargeted")
    assert svc["spec"]["ports"][0]["port"] == 2222
    for other in ("fo-ps-0", "fo-worker-0"):  # the others keep running, untouched
        assert after[other]["metadata"]["uid"] == before[other]["metadata"]["uid"]
    jobs.end_pod("fo-worker-0", "Succeeded")
    jobs.wait_condition("TFJob", "fo", "Succeeded")


def test_ports_that_host_processes_listen_on_are_not_picked(jobs: Jobs) -> None:
    # each node reports host listeners on 30 of the range's 40 ports (annotation railnet.io/host-listeners,
    # the contract a node agent fills); 10 jobs x 2 replicas must all land on the other 10
    nodes = [n["metadata"]["name"] for n in jobs.api.get("/api/v1/nodes")["items"]]

    def annotate(value: str | None) -> None:
        for node in nodes:
            jobs.api.call("PATCH", f"/api/v1/nodes/{node}", {"metadata": {"annotations": {HOST_LISTENERS: value}}},
                          "application/merge-patch+json")

    annotate("22,34100-34129")
    try:
        jobs.start("--hostnetwork-port-range=34100-34139")
        for i in range(10):
            jobs.create(tfjob(f"l{i}", annotations=HOST, Worker=replica("tensorflow", 2)))
        names = {f"l{i}-worker-{w}" for i in range(10) for w in (0, 1)}
        pods = jobs.wait_running(names)
        used = [host_port(pods[n]) for n in names]
        assert all(34130 <= p <= 34139 for p in used), sorted(used)
        by_node: dict[str, list[int]] = defaultdict(list)
        for n in names:
            by_node[pods[n]["spec"]["nodeName"]].append(host_port(pods[n]))
        assert all(len(v) == len(set(v)) for v in by_node.values())
    finally:
        annotate(None)


def test_railnet_scheduler_keeps_gang_replicas_that_share_a_port_apart(jobs: Jobs) -> None:
    # 12 gang-scheduled replicas on a range of 4 ports: every port has 3 holders, so the controller's
    # picker cannot keep ports unique and relies on the scheduler; railnet's scheduler packs gangs
    # tightly unless its host-port filter (scheduler/live/hostports.py) keeps them apart. Node 0's host
    # processes listen on 34300, which no replica may get there.
    nodes = sorted(n["metadata"]["name"] for n in jobs.api.get("/api/v1/nodes")["items"])
    name = f"railnet-{jobs.ns[-5:]}"
    log = jobs.tmp / "scheduler.log"
    with log.open("wb") as out:
        sched = subprocess.Popen([sys.executable, "-m", "railnet.cli", "scheduler", f"--kubeconfig={jobs.cluster.kubeconfig}",
                                  f"--scheduler-name={name}", f"--lease-namespace={jobs.ns}", f"--lease-name={name}",
                                  f"--identity={name}"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                 preexec_fn=_die_with_parent)
    sched.log = log  # type: ignore[attr-defined]
    jobs.procs.append(sched)  # killed with the controllers
    jobs.api.call("PATCH", f"/api/v1/nodes/{nodes[0]}", {"metadata": {"annotations": {HOST_LISTENERS: "22,34300"}}},
                  "application/merge-patch+json")
    try:
        jobs.start("--hostnetwork-port-range=34300-34303", "--gang-scheduling", f"--gang-scheduler-name={name}")
        for i in range(6):
            jobs.create(tfjob(f"g{i}", annotations=HOST, Worker=replica("tensorflow", 2)))
        names = {f"g{i}-worker-{w}" for i in range(6) for w in (0, 1)}
        pods = jobs.wait_running(names)
        by_node: dict[str, list[int]] = defaultdict(list)
        for n in names:
            assert pods[n]["spec"]["schedulerName"] == name
            by_node[pods[n]["spec"]["nodeName"]].append(host_port(pods[n]))
        for node, held in by_node.items():
            assert len(held) == len(set(held)), f"{node} has a host port twice: {sorted(held)}"
        assert 34300 not in by_node.get(nodes[0], []), by_node
        assert max(Counter(p for held in by_node.values() for p in held).values()) >= 3  # ports were shared
    finally:
        jobs.api.call("PATCH", f"/api/v1/nodes/{nodes[0]}", {"metadata": {"annotations": {HOST_LISTENERS: None}}},
                      "application/merge-patch+json")
