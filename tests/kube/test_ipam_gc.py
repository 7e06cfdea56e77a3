"""Cluster IPAM failures against the real API server: the agent's reconcile, agents SIGKILLed mid-claim and
mid-ADD, the controller after a node is deleted while its agent is down, a watch answered 410 Gone, the
API server restarted during a run, fixed IPs across nodes and owners. `railnet ipam audit` is clean after
each scenario. Agents are real processes with their own node name and state dir; calls go through the shim."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cni.spec.errors import TRY_AGAIN_LATER
from ipam import controller
from ipam.audit import audit
from ipam.crd import BLOCK_PLURAL, GROUP, POOL_LABEL, RESERVATION_PLURAL, VERSION
from ipam.kubeapi import ApiError, KubeApi
from ipam.poolcache import PoolCache
from railnet.dev.devcluster import DevCluster
from railnet.dev.lab import Lab, PluginCall, ip
from tests.kube import kubeutil
from tests.kube.ipam_agents import Nodes, pool


@pytest.fixture
def kube(cluster: DevCluster, railnet_crds: Any) -> Iterator[KubeApi]:
    api = KubeApi(cluster.kubeconfig)
    yield api
    api.close()


@pytest.fixture
def nodes(cluster: DevCluster, core: client.CoreV1Api) -> Iterator[Any]:
    made: list[Nodes] = []

    def make(count: int, extra: list[str] | None = None, env: dict[str, str] | None = None) -> Nodes:
        n = Nodes(cluster.kubeconfig, core, count, 1.0, extra)
        made.append(n)
        return n.start(env=env)

    yield make
    for n in made:
        n.close()


@pytest.fixture
def ns(core: client.CoreV1Api, namespace: str) -> Iterator[str]:
    """The test namespace; its pods are force-deleted afterwards (no kubelet would ever confirm them)."""
    yield namespace
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


def _name() -> str:
    return f"g{uuid.uuid4().hex[:6]}"


def _blocks(custom: client.CustomObjectsApi, name: str) -> list[dict[str, Any]]:
    out = custom.list_cluster_custom_object(GROUP, VERSION, BLOCK_PLURAL, label_selector=f"{POOL_LABEL}={name}")
    return list(out["items"])


def _addr(call: PluginCall) -> str:
    assert call.ok and call.output, call
    return str(call.output["ips"][0]["address"]).split("/")[0]


def _clean(kube: KubeApi) -> None:
    """The audit is clean once the agents have published (they do so every half second)."""
    last: list[str] = []

    def ok() -> bool:
        nonlocal last
        report = audit(kube)
        last = report.lines()
        return report.clean

    try:
        kubeutil.wait_for(ok, 30, "a clean audit", interval=0.5)
    except Exception:
        raise AssertionError("\n".join(last)) from None


def _pod(core: client.CoreV1Api, namespace: str, name: str, node: str, labels: dict[str, str] | None = None,
         owner: client.V1OwnerReference | None = None) -> str:
    body = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels, owner_references=[owner] if owner else None),
        spec=client.V1PodSpec(node_name=node, containers=[client.V1Container(name="c", image="none")]))
    return str(core.create_namespaced_pod(namespace, body).metadata.uid)


def _pod_args(namespace: str, name: str, uid: str) -> str:
    return f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}"


def _delete_pod(core: client.CoreV1Api, namespace: str, name: str) -> None:
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    kubeutil.wait_for(lambda: name not in {p.metadata.name for p in core.list_namespaced_pod(namespace).items},
                      30, f"pod {name} deleted")


# ------------------------------------------------------------------------------------------ reconcile

def test_reconcile_releases_only_addresses_whose_pod_and_netns_are_both_gone(
        kube: KubeApi, core: client.CoreV1Api, custom: client.CustomObjectsApi, nodes: Any, ns: str) -> None:
    namespace = ns
    one = nodes(1, extra=["--reconcile-interval", "0.3", "--reconcile-min-age", "0"])
    node = one.names[0]
    lab = Lab("rnrc")
    try:
        netns = {k: lab.netns(k) for k in "abcde"}
        uids = {k: _pod(core, namespace, f"pod-{k}", node) for k in "abcd"}
        with pool(custom, _name(), {"subnet": "10.210.0.0/24", "blockSize": 26}) as name:
            for k in "abcd":
                assert one.call(0, "ADD", name, f"cid-{k}", netns=netns[k],
                                args=_pod_args(namespace, f"pod-{k}", uids[k])).ok
            assert one.call(0, "ADD", name, "cid-e", netns=netns["e"]).ok  # no pod named at ADD
            ip("netns", "del", lab.namespaces[0])     # a: netns gone, pod still there -> kept
            _delete_pod(core, namespace, "pod-b")          # b: pod gone, netns still there -> kept
            _delete_pod(core, namespace, "pod-c")          # c: both gone -> released
            ip("netns", "del", lab.namespaces[2])
            _delete_pod(core, namespace, "pod-d")          # d: re-created under the same name, netns gone
            _pod(core, namespace, "pod-d", node)
            ip("netns", "del", lab.namespaces[3])
            ip("netns", "del", lab.namespaces[4])      # e: netns gone, but no pod known -> kept

            def held(k: str) -> bool:
                return one.call(0, "CHECK", name, f"cid-{k}", netns="/proc/self/ns/net").ok

            kubeutil.wait_for(lambda: not held("c") and not held("d"), 30, "c and d released by the reconcile")
            assert held("a") and held("b") and held("e")
            log = one.agents[0].log_path.read_text()
            assert "reconcile released" in log and "does not exist" in log and "was re-created" in log
            for k in "abe":
                assert one.call(0, "DEL", name, f"cid-{k}").ok
            _clean(kube)
    finally:
        lab.namespaces = [n for n in lab.namespaces if os.path.exists(f"/run/netns/{n}")]
        lab.close()


# ------------------------------------------------------------------------------------------ crashes

@pytest.mark.parametrize("point", ["ipam:block-claiming", "ipam:block-created", "ipam:allocated"])
def test_agent_killed_mid_claim_or_mid_add_loses_and_leaks_nothing(
        kube: KubeApi, custom: client.CustomObjectsApi, nodes: Any, point: str) -> None:
    fault = Path(tempfile.mkdtemp(prefix="railnet-fault-")) / "hit"
    two = nodes(2)
    with pool(custom, _name(), {"subnet": "10.211.0.0/24", "blockSize": 27}) as name:
        assert two.call(1, "ADD", name, "other-0").ok  # a neighbour with its own block
        two.restart(0, env={"RAILNET_FAULT_POINT": point, "RAILNET_FAULT_FILE": str(fault)})
        with ThreadPoolExecutor(1) as ex:
            first = ex.submit(two.call, 0, "ADD", name, "victim")
            kubeutil.wait_for(fault.exists, 30, f"the agent reaching {point}")
            two.restart(0)  # SIGKILL at exactly that step, then a fresh agent on the same state dir
            assert not first.result(timeout=60).ok
        again = two.call(0, "ADD", name, "victim")  # the runtime retries the ADD
        addrs = [_addr(again)] + [_addr(two.call(0, "ADD", name, f"after-{i}")) for i in range(40)]
        addrs.append(_addr(two.call(1, "ADD", name, "other-1")))
        assert len(set(addrs)) == len(addrs)
        _clean(kube)
        for cid in ["victim", *(f"after-{i}" for i in range(40))]:
            assert two.call(0, "DEL", name, cid).ok
        for cid in ("other-0", "other-1"):
            assert two.call(1, "DEL", name, cid).ok
        # the half-made claim is settled too: every block goes back once empty
        kubeutil.wait_for(lambda: not _blocks(custom, name), 60, "every block released")
        _clean(kube)


def test_node_deleted_while_its_agent_is_down_controller_frees_its_blocks_only_after_404(
        kube: KubeApi, core: client.CoreV1Api, custom: client.CustomObjectsApi, nodes: Any) -> None:
    two = nodes(2)
    with pool(custom, _name(), {"subnet": "10.212.0.0/24", "blockSize": 27}) as name:
        for i in (0, 1):
            assert two.call(i, "ADD", name, f"c{i}").ok
        two.agents[0].kill()
        # Neither node has a kubelet, so both are NotReady: that alone frees nothing.
        assert not [b for b in controller.reconcile_once(kube) if name in b]
        assert {b["spec"]["node"] for b in _blocks(custom, name)} == set(two.names)
        core.delete_node(two.names[0])
        released = [b for b in controller.reconcile_once(kube) if name in b]
        assert len(released) == 1
        assert {b["spec"]["node"] for b in _blocks(custom, name)} == {two.names[1]}
        assert two.call(1, "DEL", name, "c1").ok
        _clean(kube)


# ------------------------------------------------------------------------------------------ API server

def test_pool_watch_answered_410_gone_relists_and_keeps_up(kube: KubeApi, custom: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiError) as gone:
        next(iter(kube.watch_pools("1", timeout=5)))  # compacted long ago
    assert gone.value.status == 410
    cache = PoolCache(kube, watch_timeout=5)
    real = cache._relist
    calls: list[str] = []

    def stale_first() -> str:
        rv = real()
        calls.append(rv)
        return "1" if len(calls) == 1 else rv

    cache._relist = stale_first  # type: ignore[method-assign]
    cache.start()
    try:
        kubeutil.wait_for(lambda: len(calls) >= 2, 30, "a relist after 410 Gone")
        with pool(custom, _name(), {"subnet": "10.213.0.0/24"}) as name:
            kubeutil.wait_for(lambda: name in cache.all(), 30, "the new pool in the cache")
        kubeutil.wait_for(lambda: name not in cache.all(), 30, "the deleted pool gone from the cache")
    finally:
        cache.stop()


def _restart_apiserver(cluster: DevCluster) -> None:
    """Stop the session cluster's kube-apiserver and start it again on the same port, etcd kept; the
    cluster's state file records the new process, so the session fixture's `down` still stops it."""
    state = cluster.state()
    argv = list(state["processes"]["kube-apiserver"]["argv"])
    # Its own Popen, not devcluster's stop helper: that one reaps any child of this process, including
    # the plugin processes the test is running meanwhile (their exit status would read 0).
    proc = cluster._popen["kube-apiserver"]
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    cluster._spawn(state, "kube-apiserver", argv)
    api = cluster.api()
    kubeutil.wait_for(lambda: api.ok("/readyz"), 120, "kube-apiserver ready again")


def test_api_server_restarted_during_a_run_loses_nothing(
        cluster: DevCluster, kube: KubeApi, custom: client.CustomObjectsApi, nodes: Any) -> None:
    three = nodes(3)
    with pool(custom, _name(), {"subnet": "10.214.0.0/21", "blockSize": 28}) as name:
        stop = threading.Event()
        calls: list[tuple[int, str, PluginCall]] = []

        def churn(i: int) -> None:
            j = 0
            while not stop.is_set() or j < 20:
                cid = f"r{i}-{j}"
                calls.append((i, cid, three.call(i, "ADD", name, cid)))
                j += 1
                time.sleep(0.1)

        with ThreadPoolExecutor(3) as ex:
            futures = [ex.submit(churn, i) for i in range(3)]
            time.sleep(0.5)
            began = time.monotonic()
            _restart_apiserver(cluster)
            print(f"kube-apiserver restarted in {time.monotonic() - began:.1f}s")
            stop.set()
            for f in futures:
                f.result(timeout=120)
        failed = [(i, cid, c) for i, cid, c in calls if not c.ok]
        # an ADD that needed the API server while it was away says "try again later", nothing else
        assert all(c.output and c.output["code"] == TRY_AGAIN_LATER for _, _, c in failed), failed[:3]
        addrs = [_addr(c) for _, _, c in calls if c.ok] + [_addr(three.call(i, "ADD", name, cid))
                                                             for i, cid, _ in failed]
        assert len(addrs) == len(calls) and len(set(addrs)) == len(addrs)
        _clean(kube)
        for i, cid, _ in calls:
            assert three.call(i, "DEL", name, cid).ok
        kubeutil.wait_for(lambda: not _blocks(custom, name), 60, "every block released")
        _clean(kube)


# ------------------------------------------------------------------------------------------ fixed IPs

def test_job_replica_keeps_its_ip_on_another_node_and_a_new_owner_gets_a_new_reservation(
        kube: KubeApi, core: client.CoreV1Api, custom: client.CustomObjectsApi, nodes: Any, ns: str) -> None:
    namespace = ns
    two = nodes(2)
    fixed = ipaddress.ip_network("10.215.0.240/28")
    labels = {"training.kubeflow.org/replica-type": "worker", "training.kubeflow.org/replica-index": "0"}

    def owner() -> client.V1OwnerReference:
        cm = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="job1")))
        return client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="job1", uid=cm.metadata.uid,
                                       controller=True)

    def reservations() -> list[dict[str, Any]]:
        return list(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, RESERVATION_PLURAL)["items"])

    spec = {"subnet": "10.215.0.0/24", "blockSize": 26,
            "fixedRanges": [{"start": "10.215.0.241", "end": "10.215.0.250"}]}
    with pool(custom, _name(), spec) as name:
        ref = owner()
        uid = _pod(core, namespace, "job1-worker-0", two.names[0], labels, ref)
        first = _addr(two.call(0, "ADD", name, "w0-a", args=_pod_args(namespace, "job1-worker-0", uid)))
        assert ipaddress.ip_address(first) in fixed
        plain = _addr(two.call(0, "ADD", name, "plain"))  # no pod: an address from the node's block
        assert ipaddress.ip_address(plain) not in fixed
        assert two.call(0, "DEL", name, "w0-a").ok
        _delete_pod(core, namespace, "job1-worker-0")
        uid = _pod(core, namespace, "job1-worker-0", two.names[1], labels, ref)  # re-created elsewhere
        again = _addr(two.call(1, "ADD", name, "w0-b", args=_pod_args(namespace, "job1-worker-0", uid)))
        assert again == first
        assert two.call(1, "DEL", name, "w0-b").ok
        assert len(reservations()) == 1
        _clean(kube)

        # The owner goes (its replica first: without a kubelet a pod deleted by the GC would stay
        # Terminating): the garbage collector deletes the reservation, the controller frees its claim.
        _delete_pod(core, namespace, "job1-worker-0")
        core.delete_namespaced_config_map("job1", namespace, propagation_policy="Background")
        kubeutil.wait_for(lambda: not reservations(), 120, "the reservation deleted with its owner")
        released = [b for b in controller.reconcile_once(kube) if b.startswith(name)]
        assert len(released) == 1
        assert not [b for b in _blocks(custom, name) if b["spec"].get("reservation")]
        _clean(kube)

        # A new owner of the same name is another job: a fresh reservation, an address from fixedRanges.
        ref = owner()
        uid = _pod(core, namespace, "job1-worker-0", two.names[1], labels, ref)
        third = _addr(two.call(1, "ADD", name, "w0-c", args=_pod_args(namespace, "job1-worker-0", uid)))
        assert ipaddress.ip_address(third) in fixed
        assert [r["spec"]["owner"]["uid"] for r in reservations()] == [ref.uid]
        _clean(kube)
        assert two.call(1, "DEL", name, "w0-c").ok
        assert two.call(0, "DEL", name, "plain").ok
        _clean(kube)


# ------------------------------------------------------------------------------------------ example

def test_example_cluster_pool_serves_blocks_and_fixed_ips(
        kube: KubeApi, core: client.CoreV1Api, custom: client.CustomObjectsApi, cluster: DevCluster,
        apply: Any, ns: str) -> None:
    namespace = ns
    n = Nodes(cluster.kubeconfig, core, 1, 1.0)
    try:
        n.start(labels={"railnet.io/rail0": "true"})
        (obj,) = apply("examples/ippool-rail0-cluster.yaml")
        name = obj.metadata.name
        try:
            plain = ipaddress.ip_address(_addr(n.call(0, "ADD", name, "ex-0", network="rail0")))
            assert plain in ipaddress.ip_network("172.30.0.0/16")
            assert not ipaddress.ip_address("172.30.255.1") <= plain <= ipaddress.ip_address("172.30.255.254")
            assert not ipaddress.ip_address("172.30.0.2") <= plain <= ipaddress.ip_address("172.30.0.15")  # excluded
            cm = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="ss")))
            ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="ss", uid=cm.metadata.uid,
                                          controller=True)
            uid = _pod(core, namespace, "ss-0", n.names[0], {"apps.kubernetes.io/pod-index": "0"}, ref)
            fixed = _addr(n.call(0, "ADD", name, "ex-1", network="rail0", args=_pod_args(namespace, "ss-0", uid)))
            assert fixed == "172.30.255.1"
            assert n.call(0, "ADD", name, "ex-2", network="other").output["code"] == 111  # networks: [rail0]
            for cid in ("ex-0", "ex-1"):
                assert n.call(0, "DEL", name, cid, network="rail0").ok
            _clean(kube)
        finally:
            custom.delete_collection_cluster_custom_object(GROUP, VERSION, BLOCK_PLURAL,
                                                           label_selector=f"{POOL_LABEL}={name}")
            custom.delete_cluster_custom_object(GROUP, VERSION, "ippools", name)
    finally:
        n.close()
