"""The few API calls the cluster store makes, with short timeouts and typed failures.

Every call either returns or raises `ApiError`; `ApiError.unavailable` is true for what a retry may
cure (no connection, a timeout, 5xx, 429), which the CNI layer reports as error 11 (try again later).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ipam.crd import BLOCK_PLURAL, GROUP, PLURAL, RESERVATION_PLURAL, VERSION

# The client's own types are partial; this module is the only one that touches them.
k8s: Any = kubernetes
TIMEOUT = (3.0, 10.0)  # (connect, read) seconds for one request


class ApiError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status  # 0 = no answer

    @property
    def unavailable(self) -> bool:
        return self.status in (0, 429) or self.status >= 500


def _wrap(exc: BaseException, what: str) -> ApiError:
    if isinstance(exc, ApiException):
        try:
            reason = json.loads(exc.body or "{}").get("message") or exc.reason
        except ValueError:
            reason = exc.reason
        return ApiError(int(exc.status or 0), f"{what}: {exc.status} {reason}")
    return ApiError(0, f"{what}: API server unreachable ({type(exc).__name__}: {exc})")


_FAILURES = (ApiException, HTTPError, OSError)


class KubeApi:
    def __init__(self, kubeconfig: Path) -> None:
        self.client = k8s.config.new_client_from_config(config_file=str(kubeconfig))
        self.client.configuration.retries = 0  # our callers decide about retries
        self.custom = k8s.client.CustomObjectsApi(self.client)
        self.core = k8s.client.CoreV1Api(self.client)

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ cluster-scoped railnet objects

    def _c(self, call: str, plural: str, *args: Any, **kw: Any) -> Any:
        try:
            return getattr(self.custom, call)(GROUP, VERSION, plural, *args, _request_timeout=TIMEOUT, **kw)
        except _FAILURES as exc:
            raise _wrap(exc, f"{call} {plural}") from None

    def get_pool(self, name: str) -> dict[str, Any]:
        return dict(self._c("get_cluster_custom_object", PLURAL, name))

    def list_pools(self) -> dict[str, Any]:
        return dict(self._c("list_cluster_custom_object", PLURAL))

    def watch_pools(self, resource_version: str, timeout: int = 60) -> Iterator[dict[str, Any]]:
        """Events after `resource_version`; ApiError(410) when it has been compacted away."""
        w = k8s.watch.Watch()
        try:
            for event in w.stream(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                  resource_version=resource_version, timeout_seconds=timeout,
                                  allow_watch_bookmarks=True, _request_timeout=(TIMEOUT[0], timeout + 5)):
                if event["type"] == "ERROR":
                    status = event["raw_object"] if isinstance(event.get("raw_object"), dict) else {}
                    raise ApiError(int(status.get("code", 500)), f"watch ippools: {status.get('message')}")
                yield event
        except _FAILURES as exc:
            raise _wrap(exc, "watch ippools") from None
        finally:
            w.stop()

    def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        self._c("patch_cluster_custom_object_status", PLURAL, name, {"status": status})

    def create_block(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._c("create_cluster_custom_object", BLOCK_PLURAL, body))

    def get_block(self, name: str) -> dict[str, Any]:
        return dict(self._c("get_cluster_custom_object", BLOCK_PLURAL, name))

    def list_blocks(self, selector: str = "") -> list[dict[str, Any]]:
        return list(self._c("list_cluster_custom_object", BLOCK_PLURAL, label_selector=selector)["items"])

    def patch_block_status(self, name: str, status: dict[str, Any]) -> None:
        self._c("patch_cluster_custom_object_status", BLOCK_PLURAL, name, {"status": status})

    def delete_block(self, name: str, uid: str | None = None) -> None:
        body = {"preconditions": {"uid": uid}} if uid else None
        self._c("delete_cluster_custom_object", BLOCK_PLURAL, name, body=body)

    # ------------------------------------------------------------------------- namespaced objects

    def _n(self, call: str, namespace: str, *args: Any, **kw: Any) -> Any:
        try:
            return getattr(self.custom, call)(GROUP, VERSION, namespace, RESERVATION_PLURAL, *args,
                                              _request_timeout=TIMEOUT, **kw)
        except _FAILURES as exc:
            raise _wrap(exc, f"{call} {RESERVATION_PLURAL}") from None

    def get_reservation(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self._n("get_namespaced_custom_object", namespace, name))

    def create_reservation(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._n("create_namespaced_custom_object", namespace, body))

    def list_reservations(self) -> list[dict[str, Any]]:
        try:
            out = self.custom.list_cluster_custom_object(GROUP, VERSION, RESERVATION_PLURAL, _request_timeout=TIMEOUT)
        except _FAILURES as exc:
            raise _wrap(exc, "list ipreservations") from None
        return list(out["items"])

    # ------------------------------------------------------------------------------------ core

    def get_node(self, name: str) -> dict[str, Any]:
        try:
            return dict(self.client.sanitize_for_serialization(self.core.read_node(name, _request_timeout=TIMEOUT)))
        except _FAILURES as exc:
            raise _wrap(exc, f"get node {name}") from None

    def list_node_names(self) -> set[str]:
        try:
            return {n.metadata.name for n in self.core.list_node(_request_timeout=TIMEOUT).items}
        except _FAILURES as exc:
            raise _wrap(exc, "list nodes") from None

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            pod = self.core.read_namespaced_pod(name, namespace, _request_timeout=TIMEOUT)
        except _FAILURES as exc:
            raise _wrap(exc, f"get pod {namespace}/{name}") from None
        return dict(self.client.sanitize_for_serialization(pod))

    def list_pod_keys(self) -> set[str]:
        try:
            pods = self.core.list_pod_for_all_namespaces(_request_timeout=TIMEOUT).items
        except _FAILURES as exc:
            raise _wrap(exc, "list pods") from None
        return {f"{p.metadata.namespace}/{p.metadata.name}" for p in pods}
