"""ElasticQuota status, written by the leader: ``status.used`` (as scheduler-plugins writes it),
``status.runtime`` (Koordinator's runtime quota) and a ``Valid`` condition; an invalid quota also gets a
Warning event saying what is wrong (sent with the status change, so once per change)."""

from __future__ import annotations

import concurrent.futures
import datetime
from collections.abc import Mapping
from typing import Any

from scheduler.live.binder import Events
from scheduler.live.kubeapi import KubeApi
from scheduler.live.quotas import ELASTIC_QUOTAS, QuotaBook, render
from scheduler.live.status import StatusWriter

JSON = dict[str, Any]
API_VERSION = "scheduling.x-k8s.io/v1alpha1"


def desired(book: QuotaBook, obj: Mapping[str, Any], runtime: Mapping[str, Mapping[str, int]]) -> JSON:
    name = obj["metadata"]["name"]
    problem = book.broken.get(name)
    quota = book.known.get(name)
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


class QuotaStatusWriter:
    def __init__(self, api: KubeApi, events: Events, pool: concurrent.futures.Executor) -> None:
        self.events = events
        self.writer = StatusWriter(api, pool, ELASTIC_QUOTAS)

    def sync(self, quotas: Mapping[str, JSON], book: QuotaBook) -> None:
        runtime = book.runtime()
        for obj in quotas.values():
            meta = obj["metadata"]
            if not self.writer.write(obj, desired(book, obj, runtime)):
                continue
            problem = book.broken.get(meta["name"])
            if problem:
                self.events.on_object(meta["namespace"], API_VERSION, "ElasticQuota", meta["name"],
                                      meta.get("uid", ""), "InvalidQuota", f"{problem}; nothing is admitted against"
                                      " this quota (or its children) until it is fixed")
