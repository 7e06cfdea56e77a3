"""`railnet scheduler` against the real API server, on kwok nodes that carry fixture topologies.

Each test makes its own kwok nodes (unique label, deleted afterwards), runs scheduler processes
with a scheduler name of its own (so tests never see each other's pods) and a Lease in the test
namespace, and waits with generous timeouts; nothing asserts on wall-clock durations.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from railnet.dev import kwok_topology
from railnet.dev.devcluster import DevCluster
from scheduler.live.allocation import PodAllocation
from scheduler.live.kubeapi import KubeApi, endpoint_from_config
from scheduler.live.objects import ALLOCATION_ANNOTATION, KOORD_GANG_MIN, KOORD_GANG_NAME, POD_GROUP_LABEL
from scheduler.live.reflector import Reflector
from tests.kube import kubeutil

REPO = Path(__file__).resolve().parents[2]
WAIT = 120.0


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Env:
    """One test's world: its label, scheduler name, nodes and scheduler processes."""

    def __init__(self, cluster: DevCluster, namespace: str, tmp: Path) -> None:
        self.cluster, self.ns, self.tmp = cluster, namespace, tmp
        self.api = cluster.api()
        self.tag = uuid.uuid4().hex[:6]
        self.name = f"railnet-{self.tag}"
        self.nodes: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def add_nodes(self, count: int, fixture: str | None = "hgx-h100", **kw: Any) -> list[str]:
        nodes = kwok_topology.node_set(f"s{self.tag}-{len(self.nodes)}-", count, fixture,
                                       labels={"railnet.io/test": self.tag}, **kw)
        self.nodes += nodes.names()
        names = self.cluster.add_nodes(nodes, log=lambda _: None)
        if fixture:
            kwok_topology.publish(self.api, names, fixture)
        return names

    def start(self, *extra: str, identity: str | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"sched-{len(self.procs)}.log"
        argv = [sys.executable, "-m", "railnet.cli", "scheduler", f"--kubeconfig={self.cluster.kubeconfig}",
                f"--scheduler-name={self.name}", f"--lease-namespace={self.ns}", f"--lease-name={self.name}",
                f"--identity={identity or f'{self.name}-{len(self.procs)}'}", "--log-level=debug", *extra]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def pod(self, name: str, gpus: int = 1, nics: int = 1, labels: dict[str, str] | None = None,
            annotations: dict[str, str] | None = None, on: str | None = None) -> dict[str, Any]:
        devices = {"nvidia.com/gpu": str(gpus), "rdma/roce": str(nics)}
        body = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {
                "schedulerName": self.name,
                "nodeSelector": {"railnet.io/test": self.tag, **({"kubernetes.io/hostname": on} if on else {})},
                "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                "resources": {"requests": {"cpu": "100m", "memory": "64Mi", **devices},
                                              "limits": devices}}],
            },
        }
        status, answer = self.api.request("POST", f"/api/v1/namespaces/{self.ns}/pods", body)
        assert status == 201, answer
        return answer

    def pods(self) -> list[dict[str, Any]]:
        return self.api.get(f"/api/v1/namespaces/{self.ns}/pods")["items"]

    def bound(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.pods() if p["spec"].get("nodeName")}

    def bound_at_least(self, names: set[str]) -> dict[str, dict[str, Any]] | None:
        bound = self.bound()
        return bound if names <= set(bound) else None

    def bound_count(self, count: int) -> dict[str, dict[str, Any]] | None:
        bound = self.bound()
        return bound if len(bound) == count else None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        items = self.api.get(f"/api/v1/namespaces/{self.ns}/events")["items"]
        return [e for e in items if name is None or e["involvedObject"]["name"] == name]

    def wait_event(self, name: str, text: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            return next((e for e in self.events(name) if text in e["message"]), None)

        return kubeutil.wait_for(probe, WAIT, f"an event on {name} saying {text!r}", interval=0.5)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        self.api.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods?gracePeriodSeconds=0")
        kwok_topology.delete(self.api, self.nodes)

    def logs(self, proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
        lines = Path(proc.log).read_text(errors="replace").splitlines()  # type: ignore[attr-defined]
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


@pytest.fixture
def env(cluster: DevCluster, namespace: str, railnet_crds: Any, tmp_path: Path,
        dyn: Any) -> Iterator[Env]:
    kubeutil.apply(dyn, kubeutil.load([kubeutil.DEPLOY / "scheduler" / "crds" / "podgroups.scheduling.x-k8s.io.yaml"]))
    world = Env(cluster, namespace, tmp_path)
    try:
        yield world
    finally:
        world.close()


def devices(pod: dict[str, Any]) -> PodAllocation:
    return PodAllocation.from_annotation(pod["metadata"]["annotations"][ALLOCATION_ANNOTATION])


def used_gpus(pods: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    return [(p["spec"]["nodeName"], g.index) for p in pods.values() for g in devices(p).gpus]


def create_at_once(make: Callable[[int], Any], count: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(make, range(count)))


# -- tests -----------------------------------------------------------------------------------------------


def test_binds_with_allocation_annotation_and_metrics(env: Env) -> None:
    [topo_node] = env.add_nodes(1)
    [plain_node] = env.add_nodes(1, fixture=None, gpus=4, nics=2)
    port = _free_port()
    env.start(f"--metrics-port={port}")
    env.pod("two", gpus=2, nics=2, on=topo_node)
    bound = kubeutil.wait_for(lambda: env.bound().get("two"), WAIT, "pod two bound")
    alloc = devices(bound)
    assert alloc.node == bound["spec"]["nodeName"] == topo_node
    spec = kwok_topology.fixture_spec()
    assert alloc.topology_known and len(alloc.gpus) == 2 and len(alloc.nics) == 2
    for gpu in alloc.gpus:
        assert gpu.pci_address == spec["gpus"][gpu.index]["pciAddress"]
    for nic in alloc.nics:
        assert nic.rdma_device == spec["nics"][nic.index]["rdmaDevice"]
    assert [r.tier_name for r in alloc.rails] == ["SAME_SWITCH", "SAME_SWITCH"]
    # a node without a NodeTopology is used by counts only
    env.pod("plain", gpus=4, nics=2, on=plain_node)
    pods = kubeutil.wait_for(lambda: env.bound_at_least({"two", "plain"}), WAIT, "binds")
    assert pods["plain"]["spec"]["nodeName"] == plain_node and not devices(pods["plain"]).topology_known
    conds = {c["type"]: c["status"] for c in pods["two"]["status"].get("conditions", [])}
    assert conds.get("PodScheduled") == "True"
    scheduled = env.wait_event("two", f"Successfully assigned {env.ns}/two to {topo_node}")  # as kube-scheduler's
    assert scheduled["reason"] == "Scheduled" and scheduled["type"] == "Normal", scheduled
    assert scheduled["source"]["component"] == "railnet-scheduler", scheduled
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "railnet_scheduler_binds_total 2.0" in text
    assert "railnet_scheduler_scheduling_latency_seconds_count" in text


def test_no_double_booking_under_concurrent_pods(env: Env) -> None:
    [node] = env.add_nodes(1)
    env.start()
    create_at_once(lambda i: env.pod(f"p{i:02d}"), 16)  # 2x the node's 8 GPUs, all at once
    kubeutil.wait_for(lambda: len(env.bound()) == 8 or None, WAIT, "8 pods bound")
    waiting = [p["metadata"]["name"] for p in env.pods() if not p["spec"].get("nodeName")]
    assert len(waiting) == 8
    env.wait_event(waiting[0], "no node has 1 free nvidia.com/gpu")
    bound = env.bound()
    assert len(bound) == 8  # still exactly capacity
    gpus, nics = used_gpus(bound), [(p["spec"]["nodeName"], n.index) for p in bound.values() for n in devices(p).nics]
    assert len(set(gpus)) == 8 and len(set(nics)) == 8 and {n for n, _ in gpus} == {node}
    # freeing capacity lets the waiting pods in (no pod stuck behind its back-off forever)
    for name in list(bound)[:3]:
        env.api.request("DELETE", f"/api/v1/namespaces/{env.ns}/pods/{name}?gracePeriodSeconds=0")
    kubeutil.wait_for(lambda: len(env.bound()) == 8 and len(env.pods()) == 13 or None, WAIT, "3 more bound")
    assert len(set(used_gpus(env.bound()))) == 8


def test_gangs_all_or_nothing_two_competing(env: Env) -> None:
    env.add_nodes(2)  # 16 GPUs: room for one gang of 4 x 4 GPUs, not two
    for group in ("ga", "gb"):
        env.api.request("POST", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{env.ns}/podgroups", {
            "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": group},
            "spec": {"minMember": 4, "scheduleTimeoutSeconds": 5}})
    env.start()
    create_at_once(lambda i: env.pod(f"{'ga' if i % 2 else 'gb'}-{i // 2}", gpus=4, nics=4,
                                     labels={POD_GROUP_LABEL: "ga" if i % 2 else "gb"}), 8)

    def one_gang_bound() -> str | None:
        bound = env.bound()
        groups = {name.split("-")[0] for name in bound}
        return groups.pop() if len(bound) == 4 and len(groups) == 1 else None

    winner = kubeutil.wait_for(one_gang_bound, WAIT, "one whole gang bound")
    loser = "gb" if winner == "ga" else "ga"
    env.wait_event(f"{loser}-0", f"gang {env.ns}/{loser}: 0 of 4 members fit")
    timeout = env.wait_event(f"{loser}-0", "gave up after 5s")
    assert timeout["reason"] == "GangTimeout" and "holding no devices" in timeout["message"]
    assert all(name.startswith(winner) for name in env.bound())  # the loser holds nothing
    # the winner finishes: the loser gets all of it (no deadlock)
    for i in range(4):
        env.api.request("DELETE", f"/api/v1/namespaces/{env.ns}/pods/{winner}-{i}?gracePeriodSeconds=0")
    kubeutil.wait_for(lambda: sorted(env.bound()) == [f"{loser}-{i}" for i in range(4)] or None, WAIT,
                      f"gang {loser} bound")
    assert len(set(used_gpus(env.bound()))) == 16
    # a Koordinator gang needs min-available 2 of its 2 pods; 3 x 8-GPU pods leave room for none now
    koord = {KOORD_GANG_NAME: "gk", KOORD_GANG_MIN: "2"}
    env.pod("gk-0", gpus=8, nics=8, annotations=koord)
    env.wait_event("gk-0", "minMember 2 but only 1 pods exist")
    env.pod("gk-1", gpus=8, nics=8, annotations=koord)
    env.wait_event("gk-1", f"gang {env.ns}/gk: 0 of 2 members fit")
    assert not any(name.startswith("gk") for name in env.bound())


def test_bad_input_is_reported_and_nothing_half_done(env: Env) -> None:
    env.add_nodes(1)
    env.api.request("POST", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{env.ns}/podgroups", {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": "short"},
        "spec": {"minMember": 5}})
    env.start()
    for i in range(3):
        env.pod(f"short-{i}", labels={POD_GROUP_LABEL: "short"})
    env.pod("huge", gpus=16, nics=1)
    env.pod("orphan", labels={POD_GROUP_LABEL: "nosuchgroup"})
    env.wait_event("short-0", "minMember 5 but only 3 pods exist")
    env.wait_event("huge", "no node has 16 nvidia.com/gpu (the largest has 8)")
    env.wait_event("orphan", "PodGroup")
    pg_events = [e for e in env.events("short") if e["involvedObject"]["kind"] == "PodGroup"]
    assert pg_events and "minMember 5" in pg_events[0]["message"]
    env.pod("fine")  # the scheduler is not stuck behind bad input
    kubeutil.wait_for(lambda: env.bound().get("fine"), WAIT, "pod fine bound")
    assert set(env.bound()) == {"fine"}


def test_leader_failover_during_a_burst(env: Env) -> None:
    env.add_nodes(5)  # 40 GPUs
    timing = ("--lease-duration=4", "--renew-deadline=3", "--retry-period=0.5")
    first = env.start(*timing, identity="replica-a")
    path = f"/apis/coordination.k8s.io/v1/namespaces/{env.ns}/leases/{env.name}"
    kubeutil.wait_for(lambda: env.api.request("GET", path)[0] == 200 or None, WAIT, "a lease")
    second = env.start(*timing, identity="replica-b")
    stop = threading.Event()

    def burst() -> None:
        for i in range(40):
            if stop.is_set():
                return
            env.pod(f"b{i:02d}")

    creator = threading.Thread(target=burst)
    creator.start()
    kubeutil.wait_for(lambda: len(env.bound()) >= 8 or None, WAIT, "some pods bound by the first leader")
    holder = env.api.get(path)["spec"]["holderIdentity"]
    leader, standby = (first, second) if holder == "replica-a" else (second, first)
    leader.kill()
    leader.wait(10)
    creator.join(WAIT)
    bound = kubeutil.wait_for(lambda: env.bound_count(40), WAIT, "all 40 bound")
    assert env.api.get(path)["spec"]["holderIdentity"] != holder
    assert len(set(used_gpus(bound))) == 40  # no device given twice across the two leaders
    rejected = [r for r in env.logs(standby) if r.get("msg") == "bind rejected"]
    assert not rejected, rejected  # the new leader never tried a pod the old one had bound
    assert standby.poll() is None


def _event(env: Env, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
            "involvedObject": {"kind": "Pod", "namespace": env.ns, "name": "nobody"}, "reason": "Test", "message": name}
    assert env.api.request("POST", f"/api/v1/namespaces/{env.ns}/events", body)[0] == 201


def _compact_etcd(env: Env) -> None:
    """Compact etcd to its current revision: every older resourceVersion is then gone for real."""
    etcd = f"http://127.0.0.1:{env.cluster.state()['ports']['etcd']}"

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(etcd + path, data=json.dumps(body).encode())
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    revision = post("/v3/kv/range", {"key": "AA=="})["header"]["revision"]
    post("/v3/kv/compaction", {"revision": revision, "physical": True})


def test_watch_relists_after_410_gone(env: Env) -> None:
    # Events are not served from the API server's watch cache, so a watch from a compacted
    # resourceVersion reaches etcd and gets 410 Expired, as any watch would after a long disconnect.
    _event(env, "before")
    _compact_etcd(env)
    api = KubeApi(endpoint_from_config(str(env.cluster.kubeconfig)))
    seen: dict[str, Any] = {}
    stop = threading.Event()

    def replace(items: list[dict[str, Any]]) -> None:
        seen.update({i["metadata"]["name"]: i for i in items})

    def on_event(kind: str, obj: dict[str, Any]) -> None:
        seen[obj["metadata"]["name"]] = obj

    reflector = Reflector(api, f"/api/v1/namespaces/{env.ns}/events", replace, on_event, stop, name="test",
                          resource_version="1")  # resume from a resourceVersion etcd no longer has
    reflector.start()
    try:
        kubeutil.wait_for(lambda: reflector.gone >= 1 and "before" in seen or None, WAIT, "410 then a relist")
        assert reflector.lists == 1
        _event(env, "after")  # the watch resumed from the relist's resourceVersion
        kubeutil.wait_for(lambda: "after" in seen or None, WAIT, "an event seen on the resumed watch")
        assert reflector.lists == 1
    finally:
        stop.set()


def test_dry_run_prints_and_binds_nothing(env: Env) -> None:
    env.add_nodes(1)
    env.pod("dry", gpus=4, nics=4)
    out = subprocess.run(
        [sys.executable, "-m", "railnet.cli", "scheduler", f"--kubeconfig={env.cluster.kubeconfig}",
         f"--scheduler-name={env.name}", "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=WAIT,
        check=True)
    [line] = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert line["pod"] == f"{env.ns}/dry" and len(line["allocation"]["gpus"]) == 4
    assert not env.bound()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

