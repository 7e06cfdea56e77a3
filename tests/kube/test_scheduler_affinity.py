"""Required inter-pod affinity / anti-affinity in `railnet scheduler`, against the real API server.

kwok nodes with fixture topologies and zone labels of the test's own; a scheduler process with a
scheduler name of its own (``Env`` of test_scheduler_live). No wall-clock assertions: waits are
generous, and "nothing is bound" is checked after the scheduler has said why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from railnet.dev import kwok_topology
from railnet.dev.devcluster import DevCluster
from scheduler.live.objects import POD_GROUP_LABEL
from tests.kube import kubeutil
from tests.kube.test_scheduler_live import WAIT, Env

HOST = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


@pytest.fixture
def env(cluster: DevCluster, namespace: str, railnet_crds: Any, tmp_path: Path, dyn: Any) -> Iterator[Env]:
    kubeutil.apply(dyn, kubeutil.load([kubeutil.DEPLOY / "scheduler" / "crds" / "podgroups.scheduling.x-k8s.io.yaml"]))
    world = Env(cluster, namespace, tmp_path)
    try:
        yield world
    finally:
        world.close()


def add_zone(env: Env, zone: str, count: int) -> list[str]:
    nodes = kwok_topology.node_set(f"s{env.tag}-{len(env.nodes)}-", count, "hgx-h100",
                                   labels={"railnet.io/test": env.tag, ZONE: f"{env.tag}-{zone}"})
    env.nodes += nodes.names()
    names = env.cluster.add_nodes(nodes, log=lambda _: None)
    kwok_topology.publish(env.api, names, "hgx-h100")
    return names


def term(key: str, **match: str) -> dict[str, Any]:
    return {"labelSelector": {"matchLabels": match}, "topologyKey": key}


def make_pod(env: Env, name: str, labels: dict[str, str], gpus: int = 1, affinity: list[dict[str, Any]] | None = None,
             anti: list[dict[str, Any]] | None = None, on: str | None = None) -> None:
    devices = {"nvidia.com/gpu": str(gpus), "rdma/roce": str(gpus)}
    spec: dict[str, Any] = {
        "schedulerName": env.name,
        "nodeSelector": {"railnet.io/test": env.tag, **({HOST: on} if on else {})},
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi", **devices}, "limits": devices}}],
    }
    rules: dict[str, Any] = {}
    if affinity:
        rules["podAffinity"] = {REQUIRED: affinity}
    if anti:
        rules["podAntiAffinity"] = {REQUIRED: anti}
    if rules:
        spec["affinity"] = rules
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}
    status, answer = env.api.request("POST", f"/api/v1/namespaces/{env.ns}/pods", body)
    assert status == 201, answer


def podgroup(env: Env, name: str, minimum: int) -> None:
    status, answer = env.api.request(
        "POST", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{env.ns}/podgroups",
        {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": name},
         "spec": {"minMember": minimum}})
    assert status == 201, answer


def test_anti_affinity_spreads_replicas_and_gang_members_over_hostnames(env: Env) -> None:
    nodes = add_zone(env, "a", 3)
    env.start()
    # a gang whose members keep off each other's hosts: one transaction, each member sees the others
    podgroup(env, "spread", 3)
    for i in range(3):
        make_pod(env, f"spread-{i}", {POD_GROUP_LABEL: "spread", "app": "spread"},
                 anti=[term(HOST, app="spread")])
    bound = kubeutil.wait_for(lambda: env.bound_count(3), WAIT, "the gang bound")
    assert sorted(p["spec"]["nodeName"] for p in bound.values()) == sorted(nodes)  # 1 GPU each, 3 hosts
    # plain replicas (no gang) with the same rule: the cache holds the ones bound before
    for i in range(3):
        make_pod(env, f"web-{i}", {"app": "web"}, anti=[term(HOST, app="web")])
    bound = kubeutil.wait_for(lambda: env.bound_count(6), WAIT, "3 replicas bound")
    assert sorted(bound[f"web-{i}"]["spec"]["nodeName"] for i in range(3)) == sorted(nodes)
    make_pod(env, "web-3", {"app": "web"}, anti=[term(HOST, app="web")])
    event = env.wait_event("web-3", "by anti-affinity of placed pods")
    assert "excluded: 3 by anti-affinity of placed pods" in event["message"], event["message"]
    assert "web-3" not in env.bound()


def test_affinity_co_locates_with_a_labelled_pod_in_its_zone(env: Env) -> None:
    add_zone(env, "a", 2)
    zone_b = add_zone(env, "b", 2)
    env.start()
    make_pod(env, "db", {"app": "db"}, on=zone_b[1])
    kubeutil.wait_for(lambda: env.bound_at_least({"db"}), WAIT, "db bound")
    for i in range(3):  # 3 x 4 GPUs: more than one node, all in zone b
        make_pod(env, f"client-{i}", {"app": "client"}, gpus=4, affinity=[term(ZONE, app="db")])
    bound = kubeutil.wait_for(lambda: env.bound_count(4), WAIT, "the clients bound")
    assert {bound[f"client-{i}"]["spec"]["nodeName"] for i in range(3)} <= set(zone_b)
    # a self-affine gang lands whole in one zone (the first member may go anywhere with the key)
    podgroup(env, "pair", 2)
    for i in range(2):
        make_pod(env, f"pair-{i}", {POD_GROUP_LABEL: "pair", "app": "pair"}, gpus=8,
                 affinity=[term(ZONE, app="pair")])
    bound = kubeutil.wait_for(lambda: env.bound_count(6), WAIT, "the pair bound")
    zones = {env.api.get(f"/api/v1/nodes/{bound[f'pair-{i}']['spec']['nodeName']}")["metadata"]["labels"][ZONE]
             for i in range(2)}
    assert zones == {f"{env.tag}-a"}  # zone b has 13 of its 16 GPUs taken: only zone a holds two 8-GPU pods


def test_unsatisfiable_rules_get_an_event_and_nothing_is_bound(env: Env) -> None:
    add_zone(env, "a", 2)
    env.start()
    make_pod(env, "lonely", {"app": "client"}, affinity=[term(ZONE, app="no-such-db")])
    event = env.wait_event("lonely", "by pod affinity")
    assert "no usable node" in event["message"] and "2 by pod affinity" in event["message"], event["message"]
    # a gang of 3 that must spread over hosts, on 2 hosts: all or nothing
    podgroup(env, "wide", 3)
    for i in range(3):
        make_pod(env, f"wide-{i}", {POD_GROUP_LABEL: "wide", "app": "wide"}, anti=[term(HOST, app="wide")])
    event = env.wait_event("wide-0", "gang")
    assert f"gang {env.ns}/wide: 2 of 3 members fit" in event["message"], event["message"]
    assert "anti-affinity" in event["message"], event["message"]
    time.sleep(2.0)  # a few more cycles
    assert env.bound() == {}
