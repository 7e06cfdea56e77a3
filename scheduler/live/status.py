"""Writes the status subresource of custom objects (PodGroups, ElasticQuotas) for the leader.

A status is sent only when it differs from the stored one and from the last one sent for that object
(timestamps in conditions aside), so the watch event of our own write causes no second write. A 409
(our copy was stale) is dropped: the watch brings the new object and the next sync tries again.
Writes for one object coalesce: while one is queued and not yet sent, a newer status replaces it, so
the queue never holds more than one write per object however slow the API server answers.
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import threading
from collections.abc import Mapping
from typing import Any

from scheduler.live.kubeapi import KubeApi

JSON = dict[str, Any]
log = logging.getLogger("railnet.scheduler.status")


def comparable(status: Mapping[str, Any] | None) -> JSON:
    out = copy.deepcopy(dict(status or {}))
    for cond in out.get("conditions") or []:
        cond.pop("lastTransitionTime", None)
    return out


class StatusWriter:
    def __init__(self, api: KubeApi, pool: concurrent.futures.Executor, plural_path: str) -> None:
        """``plural_path``: e.g. /apis/scheduling.x-k8s.io/v1alpha1/podgroups (namespaced kinds)."""
        self.api, self.pool = api, pool
        self.group_path, self.plural = plural_path.rsplit("/", 1)
        self._sent: dict[str, JSON] = {}  # uid -> last status sent
        self._queued: dict[str, JSON] = {}  # uid -> body waiting for a worker (the newest wins)
        self._lock = threading.Lock()
        self.written = 0

    def write(self, obj: Mapping[str, Any], status: JSON) -> bool:
        """Send ``status`` for ``obj`` unless it is already stored or in flight; True if sent."""
        uid = obj["metadata"].get("uid", "")
        want = comparable(status)
        with self._lock:
            if want == comparable(obj.get("status")) or self._sent.get(uid) == want:
                return False
            self._sent[uid] = want
            queued = uid in self._queued
            self._queued[uid] = {**obj, "status": status}
        if not queued:
            self.pool.submit(self._put_queued, uid)
        return True

    def _put_queued(self, uid: str) -> None:
        with self._lock:
            body = self._queued.pop(uid, None)
        if body is not None:
            self._put(body)

    def _put(self, body: JSON) -> None:
        meta = body["metadata"]
        path = f"{self.group_path}/namespaces/{meta['namespace']}/{self.plural}/{meta['name']}/status"
        try:
            status, _ = self.api.request("PUT", path, body)
        except Exception as exc:
            log.warning("status not written", extra={"object": path, "error": repr(exc)})
            status = 0
        if status == 200:
            self.written += 1
            return
        with self._lock:
            self._sent.pop(meta.get("uid", ""), None)
        if status not in (0, 404, 409):
            log.warning("status not written", extra={"object": path, "status": status})
