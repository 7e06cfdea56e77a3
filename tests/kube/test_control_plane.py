"""Smoke tests of the real control plane: the behaviours railnet's controllers rely on."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from ipam import crd as ippool
from tests.kube.conftest import GPUS_PER_NODE
from tests.kube.kubeutil import wait_for

T = TypeVar("T")
PAUSE = "registry.k8s.io/pause:3.10"  # never pulled: kwok only simulates the kubelet


def _pod(name: str, labels: dict[str, str] | None = None, scheduler: str | None = None,
         requests: dict[str, str] | None = None, port: int | None = None) -> client.V1Pod:
    resources = client.V1ResourceRequirements(requests=requests, limits=requests) if requests else None
    ports = [client.V1ContainerPort(container_port=port, name="http")] if port else None
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            scheduler_name=scheduler,
            containers=[client.V1Container(name="main", image=PAUSE, resources=resources, ports=ports)],
        ),
    )


def _phase(core: client.CoreV1Api, ns: str, name: str) -> str:
    return str(core.read_namespaced_pod(name, ns).status.phase)


def _running(core: client.CoreV1Api, ns: str, name: str, timeout: float = 30) -> client.V1Pod:
    def probe() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, ns)
        return pod if pod.status.phase == "Running" and pod.status.pod_ip else None

    return wait_for(probe, timeout, f"pod {ns}/{name} Running with an IP")


def _gone(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


# ------------------------------------------------------------------------------- custom resource


def test_custom_resource_create_watch_update(custom: client.CustomObjectsApi, railnet_crds: Any) -> None:
    args = (ippool.GROUP, ippool.VERSION, ippool.PLURAL)
    name = f"pool-{uuid.uuid4().hex[:6]}"
    body = ippool.IPPool(
        metadata={"name": name},
        spec=ippool.IPPoolSpec(subnet="10.10.0.0/24", gateway="10.10.0.1"),
    ).model_dump(by_alias=True, exclude_none=True)
    created = custom.create_cluster_custom_object(*args, body)
    try:
        rv = created["metadata"]["resourceVersion"]
        events: list[tuple[str, dict[str, Any]]] = []
        w = watch.Watch()

        def collect() -> None:
            for ev in w.stream(custom.list_cluster_custom_object, *args, resource_version=rv,
                               field_selector=f"metadata.name={name}", timeout_seconds=20):
                events.append((ev["type"], ev["object"]))
                if ev["object"].get("status", {}).get("allocations") == 3:
                    w.stop()

        watcher = threading.Thread(target=collect, daemon=True)
        watcher.start()
        time.sleep(0.3)  # the watch is open before the writes
        custom.patch_cluster_custom_object(*args, name, {"spec": {"exclude": ["10.10.0.100"]}})
        custom.patch_cluster_custom_object_status(*args, name, {"status": {"allocations": 3}})
        watcher.join(25)
        assert [t for t, _ in events] == ["MODIFIED", "MODIFIED"], events
        final = ippool.IPPool.model_validate(events[-1][1])
        assert final.spec.exclude == ["10.10.0.100"]
        assert final.status is not None and final.status.allocations == 3
        # status is a subresource: a spec write cannot change it, and the schema default applies
        stored = custom.get_cluster_custom_object(*args, name)
        assert stored["status"] == {"allocations": 3}
    finally:
        custom.delete_cluster_custom_object(*args, name)


def test_crd_schema_rejects_invalid_pool(custom: client.CustomObjectsApi, railnet_crds: Any) -> None:
    bad = {"apiVersion": f"{ippool.GROUP}/{ippool.VERSION}", "kind": ippool.KIND,
           "metadata": {"name": f"bad-{uuid.uuid4().hex[:6]}"}, "spec": {"subnet": "not-a-cidr"}}
    with pytest.raises(ApiException) as err:
        custom.create_cluster_custom_object(ippool.GROUP, ippool.VERSION, ippool.PLURAL, bad)
    assert err.value.status == 422
    assert "spec.subnet" in err.value.body


# ----------------------------------------------------------------------------- optimistic locking


def update_with_retry(read: Callable[[], T], mutate: Callable[[T], None], write: Callable[[T], T],
                      attempts: int = 20) -> tuple[T, int]:
    """Read-modify-write until the write is not a 409 Conflict. Returns (result, conflicts seen)."""
    conflicts = 0
    for _ in range(attempts):
        obj = read()
        mutate(obj)
        try:
            return write(obj), conflicts
        except ApiException as exc:
            if exc.status != 409:
                raise
            conflicts += 1
    raise AssertionError(f"still conflicting after {attempts} attempts")


def test_stale_resource_version_conflicts_and_retry_converges(core: client.CoreV1Api, namespace: str) -> None:
    cm = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="counter"), data={"n": "0"})
    )
    stale = core.read_namespaced_config_map("counter", namespace)
    cm.data["n"] = "1"
    core.replace_namespaced_config_map("counter", namespace, cm)
    stale.data["n"] = "100"
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("counter", namespace, stale)
    assert err.value.status == 409

    # Two writers incrementing concurrently: every increment lands exactly once.
    per_writer, conflicts = 15, [0, 0]

    def writer(slot: int) -> None:
        def bump(obj: client.V1ConfigMap) -> None:
            obj.data["n"] = str(int(obj.data["n"]) + 1)

        for _ in range(per_writer):
            _, seen = update_with_retry(
                lambda: core.read_namespaced_config_map("counter", namespace),
                bump,
                lambda obj: core.replace_namespaced_config_map("counter", namespace, obj),
            )
            conflicts[slot] += seen

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert core.read_namespaced_config_map("counter", namespace).data["n"] == str(1 + 2 * per_writer)


# ----------------------------------------------------------------------------- garbage collection


def test_owner_reference_garbage_collection(core: client.CoreV1Api, namespace: str) -> None:
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid,
                                  block_owner_deletion=True)
    for name in ("child-a", "child-b"):
        core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, owner_references=[ref]))
        )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    for name in ("child-a", "child-b"):
        wait_for(lambda n=name: _gone(lambda: core.read_namespaced_config_map(n, namespace)), 30,
                 f"the garbage collector to delete {name}")


# ---------------------------------------------------------------------------- scheduling and pods


def test_scheduler_binds_pod_to_kwok_node_with_gpus(core: client.CoreV1Api, namespace: str) -> None:
    whole_node = {"nvidia.com/gpu": str(GPUS_PER_NODE), "rdma/roce": str(GPUS_PER_NODE)}
    core.create_namespaced_pod(namespace, _pod("trainer", requests=whole_node))
    pod = _running(core, namespace, "trainer")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.annotations.get("kwok.x-k8s.io/node") == "fake"
    assert node.status.allocatable["nvidia.com/gpu"] == str(GPUS_PER_NODE)
    assert any(c.type == "PodScheduled" and c.status == "True" for c in pod.status.conditions)

    # More GPUs than any node has: the scheduler says so instead of binding.
    too_big = {"nvidia.com/gpu": str(GPUS_PER_NODE + 1)}
    core.create_namespaced_pod(namespace, _pod("too-big", requests=too_big))

    def unschedulable() -> bool:
        conds = core.read_namespaced_pod("too-big", namespace).status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conds)

    wait_for(unschedulable, 30, "too-big to be reported Unschedulable")
    assert core.read_namespaced_pod("too-big", namespace).spec.node_name is None


def test_pod_for_another_scheduler_stays_pending(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, _pod("mine", scheduler="railnet-scheduler"))
    core.create_namespaced_pod(namespace, _pod("theirs"))
    # Once kube-scheduler has bound a pod created after ours, it has seen ours too and left it alone.
    _running(core, namespace, "theirs")
    time.sleep(1.0)
    pod = core.read_namespaced_pod("mine", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    assert not [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]


def test_service_gets_endpointslice_for_kwok_pod(api_client: client.ApiClient, core: client.CoreV1Api,
                                                 namespace: str) -> None:
    core.create_namespaced_pod(namespace, _pod("web-0", labels={"app": "web"}, port=8080))
    pod = _running(core, namespace, "web-0")
    core.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": "web"},
                                  ports=[client.V1ServicePort(port=80, target_port="http", name="http")]),
    ))
    discovery = client.DiscoveryV1Api(api_client)

    def ready_endpoints() -> list[Any]:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=web").items
        return [(e, s) for s in slices for e in s.endpoints or [] if e.conditions.ready]

    (endpoint, eps), *_ = wait_for(ready_endpoints, 30, "an EndpointSlice with a ready endpoint")
    assert endpoint.addresses == [pod.status.pod_ip]
    assert endpoint.node_name == pod.spec.node_name
    assert endpoint.target_ref.name == "web-0"
    assert [(p.name, p.port) for p in eps.ports] == [("http", 8080)]
    # The pod IP comes from the node's podCIDR, as on a real node.
    node = core.read_node(pod.spec.node_name)
    prefix = node.spec.pod_cidr.rsplit(".", 1)[0]
    assert pod.status.pod_ip.startswith(prefix + ".")


def test_apply_fixture_creates_deploy_manifests(apply: Callable[..., list[Any]], custom: client.CustomObjectsApi,
                                               namespace: str, railnet_crds: Any) -> None:
    (nad,) = apply("examples/network-attachment-rail0.yaml")
    assert nad.metadata.namespace == namespace
    stored = custom.get_namespaced_custom_object("k8s.cni.cncf.io", "v1", namespace,
                                                 "network-attachment-definitions", "rail0")
    assert '"type": "railnet-macvlan"' in stored["spec"]["config"]
    # Applying again is a no-op, not a conflict (server-side apply, one field manager).
    (again,) = apply("examples/network-attachment-rail0.yaml")
    assert again.metadata.resourceVersion == nad.metadata.resourceVersion
