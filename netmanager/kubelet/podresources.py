"""Which devices the kubelet gave a pod, per extended resource, from its pod-resources API.

A NetworkAttachmentDefinition annotated `k8s.v1.cni.cncf.io/resourceName` (an SR-IOV VF pool, an
RDMA device pool) is attached to the device the device plugin allocated to the pod, as Multus does:
the kubelet's local gRPC service (`<kubelet root>/pod-resources/kubelet.sock`, API v1) says which
device IDs the pod holds. `Get` asks for one pod; kubelets without it answer UNIMPLEMENTED, and then
the node-wide `List` is filtered.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Final

DEFAULT_SOCKET: Final = Path("/var/lib/kubelet/pod-resources/kubelet.sock")


class PodResourcesError(RuntimeError):
    """The kubelet's pod-resources API could not be asked; the message says how to fix it."""


class PodResources:
    """A client of one kubelet's pod-resources socket (one channel, opened on first use)."""

    def __init__(self, socket: Path = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._lock = threading.Lock()
        self._stub: Any = None

    def _lister(self) -> Any:
        with self._lock:
            if self._stub is None:
                try:
                    import grpc

                    from netmanager.kubelet.gen import podresources_v1_pb2_grpc as rpc
                except ImportError as exc:
                    raise PodResourcesError(f"the kubelet gRPC client is not available ({exc}): install railnet "
                                            "with its 'kube' extra and run `make setup` (generates the stubs)") from None
                channel = grpc.insecure_channel(f"unix://{self.socket}")
                self._stub = rpc.PodResourcesListerStub(channel)
            return self._stub

    def devices(self, namespace: str, name: str) -> dict[str, list[str]]:
        """{resource name: device IDs} held by the pod's containers, in the kubelet's order."""
        import grpc

        from netmanager.kubelet.gen import podresources_v1_pb2 as pb

        lister = self._lister()
        try:
            pods = [lister.Get(pb.GetPodResourcesRequest(pod_name=name, pod_namespace=namespace),
                               timeout=self.timeout).pod_resources]
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # older kubelets, or the Get gate off
                pods = [p for p in self._list(lister, pb) if p.namespace == namespace and p.name == name]
            elif exc.code() == grpc.StatusCode.NOT_FOUND or "not found" in (exc.details() or "").lower():
                return {}
            else:
                raise self._error(exc) from None
        found: dict[str, list[str]] = {}
        for pod in pods:
            for container in pod.containers:
                for group in container.devices:
                    ids = found.setdefault(group.resource_name, [])
                    ids += [d for d in group.device_ids if d not in ids]
        return found

    def _list(self, lister: Any, pb: Any) -> list[Any]:
        import grpc

        try:
            return list(lister.List(pb.ListPodResourcesRequest(), timeout=self.timeout).pod_resources)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: Any) -> PodResourcesError:
        return PodResourcesError(f"kubelet pod-resources API at {self.socket}: {exc.code().name}: {exc.details()}")
