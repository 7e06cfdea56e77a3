"""Reclaim's act step: evict victim pods through the Eviction API (policy/v1), so PodDisruptionBudgets
are honoured: the API server answers 429 when a budget does not allow the disruption, and the pod
stays (the waiting unit keeps waiting and the eviction is retried after ``RETRY_S``)."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

from scheduler.live.binder import Events
from scheduler.live.cache import PodState
from scheduler.live.kubeapi import KubeApi
from scheduler.live.metrics import Metrics

log = logging.getLogger("railnet.scheduler.evictor")
RETRY_S = 10.0


class Evictor:
    def __init__(self, api: KubeApi, events: Events, pool: concurrent.futures.Executor,
                 metrics: Metrics | None = None) -> None:
        self.api, self.events, self.pool, self.metrics = api, events, pool, metrics or Metrics()
        self._sent: dict[str, float] = {}  # pod key -> monotonic time of the last eviction request
        self._lock = threading.Lock()
        self.evicted = 0  # accepted by the API server (for tests and logs)

    def evict(self, pod: PodState, message: str) -> bool:
        """Ask for ``pod``'s eviction unless one was asked recently; False when it was skipped."""
        now = time.monotonic()
        with self._lock:
            if now - self._sent.get(pod.key, -RETRY_S) < RETRY_S:
                return False
            self._sent[pod.key] = now
            for key in [k for k, t in self._sent.items() if now - t > 10 * RETRY_S]:
                del self._sent[key]
        self.pool.submit(self._evict, pod, message)
        return True

    def _evict(self, pod: PodState, message: str) -> None:
        body = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod.name, "namespace": pod.namespace},
                "deleteOptions": {"preconditions": {"uid": pod.uid}}}
        try:
            status, answer = self.api.request(
                "POST", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/eviction", body)
        except Exception as exc:
            log.warning("eviction failed", extra={"pod": pod.key, "error": repr(exc)})
            return
        result = {200: "evicted", 201: "evicted", 429: "blocked", 404: "gone", 409: "gone"}.get(status, "error")
        self.metrics.inc("evictions", result=result)
        if status in (200, 201):
            self.evicted += 1
            log.info("evicted", extra={"pod": pod.key, "why": message})
            self.events.pod(pod, "Preempted", message)
        elif status == 429:  # a PodDisruptionBudget does not allow it now
            text = answer.get("message") if isinstance(answer, dict) else str(answer)
            log.info("eviction refused", extra={"pod": pod.key, "error": text})
            self.events.pod(pod, "EvictionBlocked", f"{message}; refused: {text}")
        elif status not in (404, 409):  # gone already, or the uid changed: nothing to do
            log.warning("eviction rejected", extra={"pod": pod.key, "status": status, "answer": str(answer)[:200]})
