"""`railnet scheduler` keeps host ports apart, against the real API server (kwok nodes, ``Env`` of
test_scheduler_live): a declared ``hostPort`` another pod holds on a node, a port the node's host
processes listen on (annotation ``railnet.io/host-listeners``, as the node agent writes it), and gang
members that share a port. Waits are generous; "not bound" is checked after the scheduler said why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from railnet.dev.devcluster import DevCluster
from scheduler.live.hostports import HOST_LISTENERS
from scheduler.live.objects import POD_GROUP_LABEL
from tests.kube import kubeutil
from tests.kube.test_scheduler_live import WAIT, Env


@pytest.fixture
def env(cluster: DevCluster, namespace: str, railnet_crds: Any, tmp_path: Path, dyn: Any) -> Iterator[Env]:
    kubeutil.apply(dyn, kubeutil.load([kubeutil.DEPLOY / "scheduler" / "crds" / "podgroups.scheduling.x-k8s.io.yaml"]))
    world = Env(cluster, namespace, tmp_path)
    try:
        yield world
    finally:
        world.close()


def port_pod(env: Env, name: str, port: int, labels: dict[str, str] | None = None, protocol: str = "TCP",
             host_network: bool = False, scheduler: str | None = None, on: str | None = None) -> None:
    devices = {"nvidia.com/gpu": "1", "rdma/roce": "1"}
    spec: dict[str, Any] = {
        "schedulerName": scheduler or env.name, "hostNetwork": host_network,
        "nodeSelector": {"railnet.io/test": env.tag},
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                        "ports": [{"containerPort": port, "hostPort": port, "protocol": protocol}],
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi", **devices}, "limits": devices}}],
    }
    if on:
        spec["nodeName"] = on
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}
    status, answer = env.api.request("POST", f"/api/v1/namespaces/{env.ns}/pods", body)
    assert status == 201, answer


def listen(core: client.CoreV1Api, node: str, ports: str) -> None:
    core.patch_node(node, {"metadata": {"annotations": {HOST_LISTENERS: ports}}})


def test_a_held_host_port_rules_the_node_out(env: Env) -> None:
    a, b, c = env.add_nodes(3)
    port_pod(env, "static", 8080, scheduler="nobody", on=a)  # bound directly, as a kubelet's static pod is
    port_pod(env, "udp", 8080, protocol="UDP", scheduler="nobody", on=b)  # another protocol holds nothing
    kubeutil.wait_for(lambda: env.bound_at_least({"static", "udp"}), WAIT, "the holders bound")
    env.start()
    for i in range(3):
        port_pod(env, f"p{i}", 8080)

    def two_bound() -> dict[str, str] | None:
        mine = {n: p["spec"]["nodeName"] for n, p in env.bound().items() if n.startswith("p")}
        return mine if len(mine) == 2 else None

    mine = kubeutil.wait_for(two_bound, WAIT, "two of three 8080 pods bound")
    assert sorted(mine.values()) == sorted([b, c])  # never on a, never two on one node
    waiting = ({"p0", "p1", "p2"} - set(mine)).pop()
    event = env.wait_event(waiting, "host port 8080 taken")
    assert event["reason"] == "FailedScheduling" and "3 by host port 8080 taken" in event["message"], event
    # the holder on a goes: the waiting pod takes its place
    status, _ = env.api.request("DELETE", f"/api/v1/namespaces/{env.ns}/pods/static?gracePeriodSeconds=0")
    assert status == 200
    node = kubeutil.wait_for(lambda: (env.bound().get(waiting) or {}).get("spec", {}).get("nodeName"), WAIT,
                             f"{waiting} bound once 8080 is free on {a}")
    assert node == a


def test_host_listeners_rule_nodes_out(env: Env, core: client.CoreV1Api) -> None:
    a, b = env.add_nodes(2)
    listen(core, a, "22,20000-20010")
    listen(core, b, "22,20005")
    env.start()
    port_pod(env, "hn", 20005, host_network=True)
    event = env.wait_event("hn", "host port 20005 taken by a host process")
    assert "2 by host port 20005 taken by a host process" in event["message"], event
    assert "hn" not in env.bound()
    listen(core, b, "22")  # the daemon on b stopped; the agent publishes the new set
    node = kubeutil.wait_for(lambda: (env.bound().get("hn") or {}).get("spec", {}).get("nodeName"), WAIT, "hn bound")
    assert node == b


def test_gang_members_with_one_port_land_on_different_nodes(env: Env) -> None:
    nodes = env.add_nodes(3)
    for group, size in (("g", 3), ("big", 4)):
        status, _ = env.api.request("POST", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{env.ns}/podgroups", {
            "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": group},
            "spec": {"minMember": size}})
        assert status == 201
    env.start()
    for i in range(3):
        port_pod(env, f"g-{i}", 2222, labels={POD_GROUP_LABEL: "g"})
    bound = kubeutil.wait_for(lambda: env.bound_at_least({"g-0", "g-1", "g-2"}), WAIT, "gang g bound")
    assert sorted(p["spec"]["nodeName"] for p in bound.values()) == sorted(nodes)  # one per node
    # four members of one port on three nodes: never placed, all or nothing, and the event says why
    for i in range(4):
        port_pod(env, f"big-{i}", 3333, labels={POD_GROUP_LABEL: "big"})
    event = env.wait_event("big-0", "host port 3333 taken by another member of the gang")
    assert f"gang {env.ns}/big: 3 of 4 members fit" in event["message"], event
    assert not any(name.startswith("big") for name in env.bound())
