"""Reclaim's act step: evict victim jobs through the Eviction API (policy/v1), so PodDisruptionBudgets
are honoured: the API server answers 429 when a budget does not allow the disruption, and the pods
stay (the waiting unit keeps waiting and the eviction is retried after ``RETRY_S``)."""

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

    def evict_job(self, pods: list[PodState], message: str) -> bool:
        """Evict a victim job (a whole gang) unless that was asked recently; False when skipped.

        Every pod is first tried with ``dryRun=All``: if a budget refuses any of them, none is evicted
        (a gang is not cut in half by a PDB that protects part of it). Budgets that allow each pod
        alone but not all together can still refuse the later ones for real."""
        now = time.monotonic()
        with self._lock:
            if not pods or any(now - self._sent.get(p.key, -RETRY_S) < RETRY_S for p in pods):
                return False
            for pod in pods:
                self._sent[pod.key] = now
            for key in [k for k, t in self._sent.items() if now - t > 10 * RETRY_S]:
                del self._sent[key]
        self.pool.submit(self._evict_job, pods, message)
        return True

    def _evict_job(self, pods: list[PodState], message: str) -> None:
        for pod in pods:
            status, answer = self._post(pod, dry_run=True)
            if status == 429:
                text = answer.get("message") if isinstance(answer, dict) else str(answer)
                log.info("eviction refused", extra={"pod": pod.key, "error": text})
                self.metrics.inc("evictions", result="blocked")
                for member in pods:
                    self.events.pod(member, "EvictionBlocked", f"{message}; refused for {pod.name}: {text}")
                return
        for pod in pods:
            self._evict(pod, message)

    def _post(self, pod: PodState, dry_run: bool = False) -> tuple[int, object]:
        body = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod.name, "namespace": pod.namespace},
                "deleteOptions": {"preconditions": {"uid": pod.uid}, **({"dryRun": ["All"]} if dry_run else {})}}
        query = "?dryRun=All" if dry_run else ""
        try:
            return self.api.request("POST", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/eviction{query}",
                                    body)
        except Exception as exc:
            log.warning("eviction failed", extra={"pod": pod.key, "error": repr(exc)})
            return 0, None

    def _evict(self, pod: PodState, message: str) -> None:
        status, answer = self._post(pod)
        if status == 0:
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
