"""ElasticQuota status, written by the leader: ``status.used`` (as scheduler-plugins writes it),
``status.runtime`` (Koordinator's runtime quota) and a ``Valid`` condition; an invalid quota also gets a
Warning event saying what is wrong. A status is written only when it differs from the stored one (and
from the last one sent), so the watch event of our own write does not cause another."""

from __future__ import annotations

import concurrent.futures
import copy
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from scheduler.live.binder import Events
from scheduler.live.kubeapi import KubeApi
from scheduler.live.quotas import ELASTIC_QUOTAS, QuotaBook, render

JSON = dict[str, Any]
log = logging.getLogger("railnet.scheduler.quota_status")
API_VERSION = "scheduling.x-k8s.io/v1alpha1"


def desired(book: QuotaBook, obj: Mapping[str, Any], runtime: Mapping[str, Mapping[str, int]]) -> JSON:
    name = obj["metadata"]["name"]
    problem = book.broken.get(name)
    quota = book.objects.get(name)
    shown = set(quota.min) | set(quota.max) if quota else set()
    used = book.used(name)
    status: JSON = {"used": render({k: used.get(k, 0) for k in shown | set(used)})}
    if name in runtime and not problem:
        status["runtime"] = render({k: v for k, v in runtime[name].items() if k in shown | set(used)})
    condition = {"type": "Valid", "status": "False" if problem else "True",
                 "reason": "InvalidQuotaTree" if problem else "Valid", "message": problem or ""}
    old = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Valid"), None)
    stamp = old.get("lastTransitionTime") if old and old.get("status") == condition["status"] else None
    condition["lastTransitionTime"] = stamp or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status["conditions"] = [condition]
    return status


def _comparable(status: Mapping[str, Any] | None) -> JSON:
    out = copy.deepcopy(dict(status or {}))
    for cond in out.get("conditions") or []:
        cond.pop("lastTransitionTime", None)
    return out


class QuotaStatusWriter:
    def __init__(self, api: KubeApi, events: Events, pool: concurrent.futures.Executor) -> None:
        self.api, self.events, self.pool = api, events, pool
        self._sent: dict[str, JSON] = {}  # uid -> last status sent

    def sync(self, quotas: Mapping[str, JSON], book: QuotaBook) -> None:
        runtime = book.runtime()
        for obj in quotas.values():
            meta = obj["metadata"]
            status = desired(book, obj, runtime)
            want = _comparable(status)
            if want == _comparable(obj.get("status")) or self._sent.get(meta.get("uid", "")) == want:
                continue
            self._sent[meta.get("uid", "")] = want
            problem = book.broken.get(meta["name"])
            if problem:
                self.events.on_object(meta["namespace"], API_VERSION, "ElasticQuota", meta["name"],
                                      meta.get("uid", ""), "InvalidQuota", f"{problem}; nothing is admitted against"
                                      " this quota (or its children) until it is fixed")
            body = {**obj, "status": status}
            self.pool.submit(self._put, body)

    def _put(self, body: JSON) -> None:
        meta = body["metadata"]
        path = f"{ELASTIC_QUOTAS.replace('/elasticquotas', '')}/namespaces/{meta['namespace']}/elasticquotas/{meta['name']}/status"
        try:
            status, answer = self.api.request("PUT", path, body)
        except Exception as exc:
            log.warning("quota status not written", extra={"quota": meta["name"], "error": repr(exc)})
            status = 0
        if status != 200:  # 409: our copy was stale; the watch brings the new one and we try again
            self._sent.pop(meta.get("uid", ""), None)
            if status not in (0, 409):
                log.warning("quota status not written", extra={"quota": meta["name"], "status": status})
