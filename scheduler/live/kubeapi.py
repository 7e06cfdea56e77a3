"""A small raw-JSON client for the API server: the watch and bind paths parse no generated models.

The ``kubernetes`` package only resolves the configuration (kubeconfig or in-cluster service
account); requests go through ``http.client`` with one keep-alive connection per thread, which is
what the benchmark measured as fast enough on a loaded two-core machine.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


class ApiError(RuntimeError):
    """A non-2xx answer: carries the HTTP status and the server's Status message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
TOKEN_REREAD_S = 60.0  # the kubelet rotates a projected token well before it expires; client-go re-reads each minute


@dataclass
class Endpoint:
    host: str
    port: int
    context: ssl.SSLContext | None
    token: str | None = None
    token_file: str | None = None  # re-read now and then: a pod's service-account token is rotated
    _token_read: float = 0.0

    def authorization(self) -> str | None:
        if self.token_file and time.monotonic() - self._token_read >= TOKEN_REREAD_S:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    fresh = f.read().strip()
                if fresh:
                    self.token = f"Bearer {fresh}"
            except OSError:
                pass  # keep the last token: a missing file mid-rotation is transient
            self._token_read = time.monotonic()
        return self.token


def endpoint_from_config(kubeconfig: str | None = None) -> Endpoint:
    """Resolve a kubeconfig file (or the in-cluster service account when None) into an endpoint."""
    from kubernetes import client, config  # slow import: only at start-up

    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    url = urllib.parse.urlsplit(cfg.host)
    context: ssl.SSLContext | None = None
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else ssl._create_unverified_context()
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
    token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    if token and not token.lower().startswith("bearer "):
        token = f"Bearer {token}"
    port = url.port or (443 if url.scheme == "https" else 80)
    return Endpoint(url.hostname or "127.0.0.1", port, context, token,
                    token_file=_token_file(kubeconfig) if kubeconfig else IN_CLUSTER_TOKEN,
                    _token_read=time.monotonic())


def _token_file(kubeconfig: str) -> str | None:
    """The current user's `tokenFile` (an in-cluster kubeconfig names the pod's rotated token that way)."""
    import yaml

    with open(kubeconfig, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    context = next((c.get("context") or {} for c in doc.get("contexts") or []
                    if c.get("name") == doc.get("current-context")), {})
    user = next((u.get("user") or {} for u in doc.get("users") or [] if u.get("name") == context.get("user")), {})
    path = user.get("tokenFile")
    return str(path) if path and not user.get("token") else None


class KubeApi:
    """GET/POST/PUT/PATCH/DELETE returning parsed JSON, and line-by-line watch streams."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0, user_agent: str = "railnet-scheduler") -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.user_agent = user_agent
        self._local = threading.local()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        ep = self.endpoint
        if ep.context is not None:
            return http.client.HTTPSConnection(ep.host, ep.port, context=ep.context, timeout=timeout)
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if content_type:
            headers["Content-Type"] = content_type
        token = self.endpoint.authorization()
        if token:
            headers["Authorization"] = token
        return headers

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        """One request on this thread's keep-alive connection (reconnects once if it went stale)."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect(self.timeout)
            try:
                conn.request(method, path, data, self._headers(content_type if data is not None else None))
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
             ok: tuple[int, ...] = (200, 201)) -> Any:
        status, obj = self.request(method, path, body, content_type)
        if status not in ok:
            message = obj.get("message", obj) if isinstance(obj, dict) else obj
            raise ApiError(status, str(message))
        return obj

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def watch(self, path: str, resource_version: str, timeout_s: int = 300) -> Iterator[JSON]:
        """The events of one watch request, from ``resource_version``; ends when the server closes it."""
        sep = "&" if "?" in path else "?"
        query = (f"{path}{sep}watch=1&allowWatchBookmarks=true&resourceVersion={resource_version}"
                 f"&timeoutSeconds={timeout_s}")
        conn = self._connect(timeout_s + 30)
        try:
            conn.request("GET", query, headers=self._headers(None))
            resp = conn.getresponse()
            if resp.status != 200:
                body = resp.read().decode(errors="replace")
                yield {"type": "ERROR", "object": {"code": resp.status, "message": body[:500]}}
                return
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()
