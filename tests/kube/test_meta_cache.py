"""The agent's pod and NAD watch caches against the real API server: API requests per ADD counted
from the apiserver's own `apiserver_request_total`, with the caches and without (--no-meta-cache),
ADD latency of both printed; a pod or NAD created the moment before its ADD, and a re-created pod
(same name, new UID), still work (the GET fallback)."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from railnet.dev.devcluster import DevCluster
from railnet.dev.lab import Lab, links_in
from tests.kube.test_meta_plugin import Node, make_nad, rail

METRIC = re.compile(r'^apiserver_request_total\{([^}]*)\} (\S+)$', re.M)
COUNTED = ("pods", "network-attachment-definitions")


def requests(api_client: client.ApiClient) -> dict[tuple[str, str], float]:
    """GET/PATCH requests the API server has served so far for pods and NADs (subresources left out)."""
    response = api_client.call_api("GET", f"{api_client.configuration.host}/metrics")
    response.read()
    text = response.data.decode()
    out: dict[tuple[str, str], float] = {}
    for labels, value in METRIC.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("resource") in COUNTED and not fields.get("subresource") and fields.get("verb") in ("GET",
                                                                                                          "PATCH"):
            key = (fields["verb"], fields["resource"])
            out[key] = out.get(key, 0.0) + float(value)
    return out


def delta(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[str, float]:
    return {f"{verb} {res}": after.get((verb, res), 0) - before.get((verb, res), 0) for verb, res in after}


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("rmc") as lab:
        yield lab


@pytest.fixture
def node_object(lab: Lab, core: client.CoreV1Api) -> Iterator[str]:
    """A Node object for the agent's node name (no kubelet, not kwok's): pods bound to it are not orphans."""
    name = f"{lab.prefix}-node"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_node(name)


def bound_pod(core: client.CoreV1Api, namespace: str, name: str, node: str, networks: str) -> client.V1Pod:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name=name, annotations={"k8s.v1.cni.cncf.io/networks": networks}),
                       spec=client.V1PodSpec(node_name=node, containers=[client.V1Container(name="c", image="none")]))
    return core.create_namespaced_pod(namespace, pod)


def wait_seen(node: Node, seconds: float = 1.0) -> None:
    """The watch delivers within milliseconds here; give it a margin (misses are correct anyway)."""
    time.sleep(seconds)


def run_adds(node: Node, core: client.CoreV1Api, api_client: client.ApiClient, namespace: str, node_name: str,
             tag: str, count: int) -> tuple[dict[str, float], list[float], list[float]]:
    pods = [bound_pod(core, namespace, f"{tag}-{i}", node_name, "rail0, rail1@rdma1") for i in range(count)]
    wait_seen(node)
    before = requests(api_client)
    adds, netnses = [], []
    for pod in pods:
        netns = node.lab.netns(pod.metadata.name)
        call = node.call("ADD", pod, netns)
        assert call.ok, call.output
        assert sorted(links_in(netns)) == ["eth0", "lo", "net1", "rdma1"]
        adds.append(call.seconds)
        netnses.append(netns)
    per_add = {k: v / count for k, v in delta(before, requests(api_client)).items()}
    dels = []
    for pod, netns in zip(pods, netnses, strict=True):
        call = node.call("DEL", pod, netns)
        assert call.ok, call.output
        dels.append(call.seconds)
        assert links_in(netns) == ["lo"]
    assert node.allocations() == 0
    return per_add, adds, dels


def start_node(lab: Lab, kubeconfig: Path, node_name: str, cache: bool) -> Node:
    node = Node(lab, kubeconfig)
    assert node.agent.args[-1] == node_name
    if not cache:
        node.agent.stop()
        node.agent.args.append("--no-meta-cache")
        node.agent.start()
    return node


def test_api_requests_per_add_with_and_without_the_caches(lab: Lab, cluster: DevCluster, railnet_crds: object,
                                                         core: client.CoreV1Api, custom: client.CustomObjectsApi,
                                                         api_client: client.ApiClient, namespace: str,
                                                         node_object: str) -> None:
    count = 8
    node = start_node(lab, cluster.kubeconfig, node_object, cache=True)
    make_nad(custom, namespace, "rail0", rail(node.nics[0], "10.71.0.0/24"))
    make_nad(custom, namespace, "rail1", rail(node.nics[1], "10.72.0.0/24"))
    cached, cached_add, cached_del = run_adds(node, core, api_client, namespace, node_object, "c", count)
    node.agent.stop()
    node.agent.args.append("--no-meta-cache")
    node.agent.start()
    direct, direct_add, direct_del = run_adds(node, core, api_client, namespace, node_object, "d", count)
    ms = lambda xs: f"p50 {statistics.median(xs) * 1e3:.1f} ms, max {max(xs) * 1e3:.1f} ms"  # noqa: E731
    print(f"\n  per ADD with the caches:    {cached}   ADD {ms(cached_add)}   DEL {ms(cached_del)}"
          f"\n  per ADD without (GET each): {direct}   ADD {ms(direct_add)}   DEL {ms(direct_del)}")
    # the pod and both NADs come from the caches; the only request is the network-status patch
    assert cached.get("GET pods", 0) == 0 and cached.get("GET network-attachment-definitions", 0) == 0, cached
    assert cached.get("PATCH pods") == 1, cached
    assert direct.get("GET pods") == 1 and direct.get("GET network-attachment-definitions") == 2, direct
    assert direct.get("PATCH pods") == 1, direct


def test_fresh_objects_and_a_recreated_pod_fall_back_to_a_get(lab: Lab, cluster: DevCluster, railnet_crds: object,
                                                             core: client.CoreV1Api,
                                                             custom: client.CustomObjectsApi,
                                                             api_client: client.ApiClient, namespace: str,
                                                             node_object: str) -> None:
    node = start_node(lab, cluster.kubeconfig, node_object, cache=True)
    make_nad(custom, namespace, "rail0", rail(node.nics[0], "10.73.0.0/24"))
    old = bound_pod(core, namespace, "p", node_object, "rail0")
    wait_seen(node)
    # the pod is re-created under the same name: the cache may still hold the old UID
    core.delete_namespaced_pod("p", namespace, grace_period_seconds=0)
    make_nad(custom, namespace, "late", rail(node.nics[1], "10.74.0.0/24"))
    new = bound_pod(core, namespace, "p", node_object, "rail0, late")
    assert new.metadata.uid != old.metadata.uid
    netns = lab.netns("p")
    add = node.call("ADD", new, netns)  # right after the creates: no time for the watch to deliver
    assert add.ok, add.output
    assert sorted(links_in(netns)) == ["eth0", "lo", "net1", "net2"]
    gone = node.call("ADD", old, lab.netns("old"))  # the old UID is refused, cached or not
    assert gone.output is not None and gone.output["code"] == 3, gone.output
    assert node.call("DEL", new, netns).ok and links_in(netns) == ["lo"]
    assert node.allocations() == 0
