"""The act step: bind assumed pods (annotation + Binding in one call) and record events.

The Binding's ``metadata.annotations`` are copied onto the pod by the API server in the same
write that sets ``spec.nodeName``, and ``metadata.uid`` makes it a precondition on the pod we
decided for: a recreated pod of the same name, or a pod someone else bound first, gets an error
(409) instead of a second binding. Errors give the devices back (``cache.forget``) and the pod is
retried after a back-off.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.live.cache import PodState, SchedulerCache
from scheduler.live.kubeapi import KubeApi
from scheduler.live.metrics import Metrics
from scheduler.live.objects import ALLOCATION_ANNOTATION

log = logging.getLogger("railnet.scheduler.binder")
COMPONENT = "railnet-scheduler"


@dataclass(frozen=True)
class Decision:
    pod: PodState
    node: str
    annotation: str  # PodAllocation JSON
    decided_at: float  # monotonic


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _created_age(pod: PodState) -> float | None:
    try:
        created = datetime.datetime.fromisoformat(pod.created.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (datetime.datetime.now(datetime.UTC) - created).total_seconds()


class Events:
    """core/v1 Events on pods (and PodGroups), deduplicated: one event per (object, reason, message)."""

    def __init__(self, api: KubeApi, pool: concurrent.futures.Executor, scheduler_name: str,
                 component: str = COMPONENT) -> None:
        self.api, self.pool, self.scheduler_name, self.component = api, pool, scheduler_name, component
        self._sent: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def pod(self, pod: PodState, reason: str, message: str, warning: bool = True, once: bool = False) -> None:
        """``once``: an event a pod gets a single time (Scheduled), so it is not kept for de-duplication."""
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace, "name": pod.name,
                    "uid": pod.uid}
        self._post(pod.namespace, involved, reason, message, warning, remember=not once)

    def on_object(self, namespace: str, api_version: str, kind: str, name: str, uid: str, reason: str,
               message: str, warning: bool = True) -> None:
        involved = {"apiVersion": api_version, "kind": kind, "namespace": namespace, "name": name, "uid": uid}
        self._post(namespace, involved, reason, message, warning)

    def _post(self, namespace: str, involved: dict[str, str], reason: str, message: str, warning: bool,
              remember: bool = True) -> None:
        dedupe = (f"{involved['kind']}/{namespace}/{involved['name']}/{involved['uid']}", reason)
        with self._lock:
            if self._sent.get(dedupe) == message:
                return
            if remember:
                self._sent[dedupe] = message
        now = _stamp()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": involved, "reason": reason, "message": message[:1024],
            "type": "Warning" if warning else "Normal", "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.scheduler_name,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self.pool.submit(self._send, namespace, body)

    def _send(self, namespace: str, body: dict[str, object]) -> None:
        try:
            status, answer = self.api.request("POST", f"/api/v1/namespaces/{namespace}/events", body)
            if status != 201:
                log.warning("event not recorded", extra={"status": status, "answer": str(answer)[:200]})
        except Exception as exc:
            log.warning("event not recorded", extra={"error": repr(exc)})

    def forget(self, key_prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._sent if k[0].startswith(key_prefix)]:
                del self._sent[key]


class Binder:
    def __init__(self, api: KubeApi, cache: SchedulerCache, metrics: Metrics, events: Events,
                 is_leader: Callable[[], bool], workers: int = 64) -> None:
        self.api, self.cache, self.metrics, self.events, self.is_leader = api, cache, metrics, events, is_leader
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bind")
        self.in_flight = 0
        self._lock = threading.Lock()

    def submit(self, decision: Decision) -> None:
        with self._lock:
            self.in_flight += 1
        self.pool.submit(self._bind, decision)

    def submit_all(self, decisions: list[Decision], gang: bool = False) -> None:
        """Send one unit's binds at once (they run concurrently on the pool); for a gang, observe
        ``gang_bind``: from the plan to the last of its binds answered."""
        if not gang or len(decisions) < 2:
            for d in decisions:
                self.submit(d)
            return
        left = [len(decisions)]
        with self._lock:
            self.in_flight += len(decisions)
        for d in decisions:
            self.pool.submit(self._bind, d, left)

    def _bind(self, d: Decision, left: list[int] | None = None) -> None:
        try:
            self._bind_once(d)
        except Exception as exc:
            log.warning("bind failed", extra={"pod": d.pod.key, "node": d.node, "error": repr(exc)})
            self.metrics.inc("bind_errors", code="exception")
            self.cache.forget(d.pod.key)
        finally:
            last = False
            with self._lock:
                self.in_flight -= 1
                if left is not None:
                    left[0] -= 1
                    last = left[0] == 0
            if last:
                self.metrics.observe("gang_bind", time.monotonic() - d.decided_at)

    def _bind_once(self, d: Decision) -> None:
        pod = d.pod
        if not self.is_leader():  # lost the lease after deciding: the new leader decides again
            self.cache.forget(pod.key, retry_after=0.0)
            return
        body = {
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                         "annotations": {ALLOCATION_ANNOTATION: d.annotation}},
            "target": {"apiVersion": "v1", "kind": "Node", "name": d.node},
        }
        t0 = time.monotonic()
        status, answer = self.api.request("POST", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/binding", body)
        self.metrics.observe("bind", time.monotonic() - t0)
        if status == 201:
            self.cache.finish_binding(pod.key)
            self.metrics.inc("bound")
            age = _created_age(pod)
            if age is not None:
                self.metrics.observe("e2e", max(age, 0.0))
            log.debug("bound", extra={"pod": pod.key, "node": d.node})
            # as kube-scheduler: `kubectl describe pod` shows who placed it, and where
            self.events.pod(pod, "Scheduled", f"Successfully assigned {pod.namespace}/{pod.name} to {d.node}",
                            warning=False, once=True)
            return
        message = answer.get("message") if isinstance(answer, dict) else str(answer)
        self.metrics.inc("bind_errors", code=str(status))
        log.warning("bind rejected", extra={"pod": pod.key, "node": d.node, "status": status, "error": message})
        self.cache.forget(pod.key)
        if status not in (404, 409):  # gone or already bound: nothing to tell the pod
            self.events.pod(pod, "FailedBinding", f"binding to {d.node} failed: HTTP {status}: {message}")
