"""The agent as the kubelet's DRA driver `rdma.railnet.io`: registration, the DRAPlugin v1 service,
and the ResourceSlice publisher.

Registration goes through the kubelet's plugin watcher: a socket in `<kubelet dir>/plugins_registry/`
serving `pluginregistration.Registration` (GetInfo -> type DRAPlugin, name = driver, endpoint = the
DRA socket, supported versions = ["v1.DRAPlugin"]); the kubelet then dials the endpoint
(`<kubelet dir>/plugins/rdma.railnet.io/dra.sock`). Unix socket paths are limited to 107 bytes;
when a kubelet dir is too deep for the standard names, short hashed ones are used.

The publisher discovers the topology at start, within a second or two of a link change
(netmanager.link_events) and every `resync` seconds, and creates or updates the node's slice when
its devices changed or the slice is gone (the kubelet deletes a driver's slices when it starts, and
when the driver has been unreachable for a while). The pool generation goes up on every change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

from netmanager.dra import DRIVER, link_state, slices
from netmanager.dra.attach import ClaimAttachments
from netmanager.dra.prepare import ClaimStore, PrepareError, Preparer
from netmanager.topology.discover import discover
from netmanager.topology.model import NodeTopology

log = logging.getLogger("railnet.dra")
DRA_SERVICE = "v1.DRAPlugin"  # k8s.io/kubelet/pkg/apis/dra/v1 DRAPluginService
MAX_SOCKET_PATH = 107


def socket_paths(kubelet_dir: Path, driver: str = DRIVER) -> tuple[Path, Path]:
    """(registration socket, DRA endpoint) under the kubelet dir."""
    registry = kubelet_dir / "plugins_registry" / f"{driver}-reg.sock"
    endpoint = kubelet_dir / "plugins" / driver / "dra.sock"
    if max(len(str(registry)), len(str(endpoint))) <= MAX_SOCKET_PATH:
        return registry, endpoint
    stem = "dra-" + hashlib.sha256(driver.encode()).hexdigest()[:8]
    registry, endpoint = kubelet_dir / "plugins_registry" / f"{stem}.reg", kubelet_dir / "plugins" / f"{stem}.sock"
    if max(len(str(registry)), len(str(endpoint))) > MAX_SOCKET_PATH:
        raise ValueError(f"kubelet dir {kubelet_dir} is too deep for unix sockets ({MAX_SOCKET_PATH} bytes)")
    return registry, endpoint


class KubeResources:
    """The API calls the driver makes, as plain JSON (the client's models lag the API's fields)."""

    def __init__(self, kubeconfig: Path, timeout: float | tuple[float, float] = 30, retries: int | None = None) -> None:
        """`timeout` per request; `retries` None keeps the client's default (the CNI path passes 0)."""
        import kubernetes

        k8s: Any = kubernetes
        self._api = k8s.config.new_client_from_config(config_file=str(kubeconfig))
        if retries is not None:
            self._api.configuration.retries = retries
        self._timeout = timeout
        self._resource = k8s.client.ResourceV1Api(self._api)
        self._core = k8s.client.CoreV1Api(self._api)
        self._exc = k8s.client.exceptions.ApiException

    def close(self) -> None:
        self._api.close()

    def _json(self, call: Any, *args: Any, **kw: Any) -> dict[str, Any] | None:
        try:
            return dict(json.loads(call(*args, _preload_content=False, _request_timeout=self._timeout, **kw).data))
        except self._exc as exc:
            if exc.status == 404:
                return None
            raise

    def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._json(self._resource.read_namespaced_resource_claim, name, namespace)

    def patch_claim_status(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """A JSON merge patch of the claim's status subresource (lists in it are replaced whole)."""
        self._json(self._resource.patch_namespaced_resource_claim_status, name, namespace, body,
                   _content_type="application/merge-patch+json")

    def get_slice(self, name: str) -> dict[str, Any] | None:
        return self._json(self._resource.read_resource_slice, name)

    def create_slice(self, body: dict[str, Any]) -> None:
        self._json(self._resource.create_resource_slice, body)

    def replace_slice(self, body: dict[str, Any]) -> None:
        self._json(self._resource.replace_resource_slice, body["metadata"]["name"], body)

    def delete_slice(self, name: str) -> None:
        self._json(self._resource.delete_resource_slice, name)

    def node_uid(self, name: str) -> str | None:
        node = self._json(self._core.read_node, name)
        return node["metadata"]["uid"] if node else None


def sync_slice(api: Any, node_name: str, topology: NodeTopology, node_uid: str | None,
               down: dict[str, str] | None = None) -> str:
    """Create or update the node's slice (`down`: NICs whose link is not up, tainted); returns
    "created", "updated" or "unchanged"."""
    devices = slices.devices(topology, down)
    name = slices.slice_name(node_name)
    current = api.get_slice(name)
    if current is None:
        api.create_slice(slices.slice_object(node_name, devices, 1, node_uid))
        return "created"
    spec = current.get("spec", {})
    # The server rewrites quantities (400000M -> 400G): compare what we computed, kept in an annotation.
    if (current["metadata"].get("annotations") or {}).get(slices.HASH_ANNOTATION) == slices.devices_hash(devices) \
            and spec.get("nodeName") == node_name and spec.get("driver") == DRIVER:
        return "unchanged"
    body = slices.slice_object(node_name, devices, int(spec.get("pool", {}).get("generation", 0)) + 1, node_uid)
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    api.replace_slice(body)  # a 409 (someone else wrote) is retried by the next pass
    return "updated"


class _Registration:
    def __init__(self, endpoint: Path) -> None:
        from netmanager.kubelet.gen import pluginregistration_v1_pb2 as reg_pb

        self._pb = reg_pb
        self.info = reg_pb.PluginInfo(type="DRAPlugin", name=DRIVER, endpoint=str(endpoint),
                                      supported_versions=[DRA_SERVICE])
        self.registered = threading.Event()
        self.error = ""

    def GetInfo(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC names)
        return self.info

    def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.error = request.error
        if request.plugin_registered:
            self.registered.set()
            log.info("registered with the kubelet", extra={"fields": {"driver": DRIVER}})
        else:
            log.error("the kubelet refused the registration: %s", request.error)
        return self._pb.RegistrationStatusResponse()


class _DraService:
    def __init__(self, preparer: Preparer) -> None:
        from netmanager.kubelet.gen import dra_v1_pb2 as pb

        self._pb = pb
        self.preparer = preparer

    def NodePrepareResources(self, request: Any, context: Any) -> Any:  # noqa: N802
        pb = self._pb
        response = pb.NodePrepareResourcesResponse()
        for claim in request.claims:
            fields = {"claim": f"{claim.namespace}/{claim.name}", "uid": claim.uid}
            try:
                devices = self.preparer.prepare(claim.namespace, claim.name, claim.uid)
            except PrepareError as exc:
                log.warning("prepare failed: %s", exc, extra={"fields": fields})
                response.claims[claim.uid].error = f"{DRIVER}: {exc}"  # the pod's event names the driver
                continue
            except Exception as exc:  # the API server, the disk: the kubelet retries
                log.exception("prepare failed", extra={"fields": fields})
                response.claims[claim.uid].error = f"{DRIVER}: {type(exc).__name__}: {exc}"
                continue
            out = response.claims[claim.uid]
            for d in devices:
                device = out.devices.add(request_names=d.request_names, pool_name=d.pool_name,
                                         device_name=d.device_name, cdi_device_ids=d.cdi_device_ids)
                if d.share_id:
                    device.share_id = d.share_id
            log.info("prepared", extra={"fields": {**fields, "devices": [d.device_name for d in devices]}})
        return response

    def NodeUnprepareResources(self, request: Any, context: Any) -> Any:  # noqa: N802
        response = self._pb.NodeUnprepareResourcesResponse()
        for claim in request.claims:
            fields = {"claim": f"{claim.namespace}/{claim.name}", "uid": claim.uid}
            try:
                self.preparer.unprepare(claim.uid)
            except Exception as exc:
                log.exception("unprepare failed", extra={"fields": fields})
                response.claims[claim.uid].error = f"{DRIVER}: {type(exc).__name__}: {exc}"
                continue
            response.claims[claim.uid].error = ""
            log.info("unprepared", extra={"fields": fields})
        return response


class DraDriver:
    """Start: publish the slice, serve the DRA socket, register. Stop: unregister, stop serving.

    The slice is left in place on stop: a restarting agent keeps the node's devices allocatable (the
    kubelet removes them itself if the driver stays away)."""

    SETTLE = 1.0

    def __init__(self, kubeconfig: Path, node_name: str, kubelet_dir: Path, state_dir: Path, cdi_dir: Path,
                 sysfs: Path, dev_root: Path, resync: float = 60.0) -> None:
        self.node_name = node_name
        self.sysfs = sysfs
        self.resync = resync
        self.registry_socket, self.endpoint = socket_paths(kubelet_dir)
        self.api = KubeResources(kubeconfig)
        self.kubeconfig = kubeconfig
        self._topology = discover(str(sysfs), node_name=node_name)
        self._topology_lock = threading.Lock()
        self.preparer = Preparer(node_name, ClaimStore(state_dir / "claims"), cdi_dir, sysfs, dev_root,
                                 self.api, self.topology)
        self.registration = _Registration(self.endpoint)
        self._server: Any = None
        self._stop = threading.Event()
        self._events: Any = None
        self._thread = threading.Thread(target=self._publish_loop, name="dra-slices", daemon=True)

    def topology(self) -> NodeTopology:
        with self._topology_lock:
            return self._topology

    def attachments(self) -> ClaimAttachments:
        """What the meta plugin asks for a network on a claim's NIC (netmanager.dra.attach)."""
        # its own client: short timeouts and no retries, so a CNI call never waits long on the API server
        # (a DEL clearing networkData must finish when the API server is gone)
        return ClaimAttachments(self.node_name, self.preparer.store, KubeResources(self.kubeconfig, (3.0, 10.0), 0),
                                self.topology)

    def start(self) -> None:
        import grpc

        from netmanager.kubelet.gen import dra_v1_pb2_grpc as dra_rpc
        from netmanager.kubelet.gen import pluginregistration_v1_pb2_grpc as reg_rpc
        from netmanager.link_events import LinkEvents

        try:
            self._events = LinkEvents().start()
        except OSError as exc:  # no netlink (a restricted sandbox): periodic resync only
            log.warning("no link events (%s): republishing every %.0fs only", exc, self.resync)
        self._thread.start()
        for path in (self.endpoint, self.registry_socket):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a predecessor killed without cleaning up
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="dra"))
        dra_rpc.add_DRAPluginServicer_to_server(_DraService(self.preparer), self._server)
        reg_rpc.add_RegistrationServicer_to_server(self.registration, self._server)
        self._server.add_insecure_port(f"unix://{self.endpoint}")
        self._server.add_insecure_port(f"unix://{self.registry_socket}")  # last: the watcher calls GetInfo at once
        self._server.start()
        log.info("DRA driver serving", extra={"fields": {"driver": DRIVER, "endpoint": str(self.endpoint),
                                                         "registration": str(self.registry_socket)}})

    def stop(self) -> None:
        self._stop.set()
        if self._events is not None:
            self._events.changed.set()
        self.registry_socket.unlink(missing_ok=True)  # the kubelet deregisters the driver
        if self._server is not None:
            self._server.stop(grace=2).wait()
            self._server = None
        self.endpoint.unlink(missing_ok=True)
        self._thread.join(timeout=5)
        if self._events is not None:
            self._events.stop()
        self.api.close()

    def _wait(self, seconds: float) -> None:
        if self._events is None:
            self._stop.wait(seconds)
            return
        if self._events.changed.wait(seconds) and not self._stop.is_set():
            self._stop.wait(self.SETTLE)  # a burst of link messages is published once
        self._events.changed.clear()

    def _publish_loop(self) -> None:
        delay, node_uid, first = 1.0, None, True
        while not self._stop.is_set():
            try:
                if not first:
                    fresh = discover(str(self.sysfs), node_name=self.node_name)
                    with self._topology_lock:
                        self._topology = fresh
                first = False
                if node_uid is None:
                    node_uid = self.api.node_uid(self.node_name)
                down = link_state.down_nics(self.sysfs, self.topology())
                outcome = sync_slice(self.api, self.node_name, self.topology(), node_uid, down)
                if outcome != "unchanged":
                    log.info("ResourceSlice %s", outcome, extra={"fields": {
                        "slice": slices.slice_name(self.node_name),
                        "devices": len(slices.devices(self.topology())), "link_down": sorted(down)}})
                wait, delay = self.resync, 1.0
            except Exception as exc:  # the API server or sysfs: log, back off, try again
                log.warning("cannot publish the ResourceSlice: %s", exc)
                wait, delay = delay, min(delay * 2, 30.0)
            self._wait(wait)
