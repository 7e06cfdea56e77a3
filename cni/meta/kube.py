"""The meta plugin's view of the cluster through the API server: pods, NADs, network-status.

Reads are direct GETs with short timeouts; the agent's watch caches (cni.meta.cache) answer first
and fall back to these on a miss. Failures that a retry may cure become error 11 (try again later).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from cni.meta.nad import nad_view
from cni.meta.plugin import Pod, pod_claims
from cni.meta.status import NETWORK_STATUS_ANNOTATION
from cni.spec.errors import INVALID_CONFIG, TRY_AGAIN_LATER, CniError

k8s: Any = kubernetes  # the client's own types are partial
TIMEOUT = (3.0, 10.0)
NAD = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")


def _failure(exc: BaseException, what: str) -> CniError:
    status = int(getattr(exc, "status", 0) or 0)
    if isinstance(exc, ApiException) and status and status < 500 and status != 429:
        return CniError(INVALID_CONFIG, f"{what}: the API server refused ({status} {exc.reason})")
    return CniError(TRY_AGAIN_LATER, f"{what}: the API server did not answer", f"{type(exc).__name__}: {exc}")


class KubePods:
    def __init__(self, kubeconfig: Path) -> None:
        self.client = k8s.config.new_client_from_config(config_file=str(kubeconfig))
        self.client.configuration.retries = 0
        self.core = k8s.client.CoreV1Api(self.client)
        self.custom = k8s.client.CustomObjectsApi(self.client)

    @staticmethod
    def _get(call: Any, what: str, *args: Any) -> Any:
        """One GET; None when the object does not exist, a CniError for any other failure."""
        try:
            return call(*args, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _failure(exc, what) from None
        except (HTTPError, OSError) as exc:
            raise _failure(exc, what) from None

    def pod(self, namespace: str, name: str, uid: str = "", fresh: bool = False) -> Pod | None:
        obj = self._get(self._pod_json, f"get pod {namespace}/{name}", name, namespace)
        if obj is None:
            return None
        meta = obj.get("metadata") or {}
        return Pod(namespace, name, str(meta.get("uid", "")), dict(meta.get("annotations") or {}), pod_claims(obj))

    def _pod_json(self, name: str, namespace: str, **kw: Any) -> dict[str, Any]:
        """The pod as plain JSON: client models cost more than the GET, and lag new API fields."""
        reply = self.core.read_namespaced_pod(name, namespace, _preload_content=False, **kw)
        return dict(json.loads(reply.data))

    def nad(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self._get(self.custom.get_namespaced_custom_object,
                        f"get NetworkAttachmentDefinition {namespace}/{name}", *NAD[:2], namespace, NAD[2], name)
        return None if obj is None else nad_view(obj)

    def set_network_status(self, pod: Pod, value: str) -> None:
        """A merge patch of one annotation; the UID in the body makes it apply to this pod only."""
        body = {"metadata": {"uid": pod.uid, "annotations": {NETWORK_STATUS_ANNOTATION: value}}}
        for attempt in range(3):
            try:
                # _preload_content=False: the reply (the whole pod) is not turned into client models,
                # which costs more than the request itself on this path (every ADD waits for it).
                reply = self.core.patch_namespaced_pod(pod.name, pod.namespace, body, _request_timeout=TIMEOUT,
                                                       _preload_content=False)
                reply.read()  # consumed, so the connection goes back to the pool clean
                reply.release_conn()
                return
            except (ApiException, HTTPError, OSError) as exc:
                error = _failure(exc, f"patch pod {pod.namespace}/{pod.name}")
                if error.code != TRY_AGAIN_LATER and getattr(exc, "status", 0) != 409:
                    raise error from None
                time.sleep(0.1 * (attempt + 1))
        raise error
