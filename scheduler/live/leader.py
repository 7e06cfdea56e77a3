"""Leader election on a coordination.k8s.io/v1 Lease, written with get / create / update.

The shape of kubernetes-client/python's LeaderElector (which has no Lease lock): a record holds
holderIdentity, leaseDurationSeconds, acquireTime, renewTime, leaseTransitions; every update
carries the resourceVersion it read, so two candidates never both win one round. A candidate
takes an existing lease only after it has watched the record stay unchanged for a whole lease
duration on its *own* clock (no clock-skew assumption). A leader that fails to renew within
``renew_deadline`` (shorter than the lease) steps down, before anyone else may take over.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from scheduler.live.kubeapi import KubeApi

log = logging.getLogger("railnet.scheduler.leader")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: KubeApi, namespace: str, name: str, identity: str, lease_s: float = 15.0,
                 renew_deadline_s: float = 10.0, retry_s: float = 2.0) -> None:
        if not retry_s < renew_deadline_s < lease_s:
            raise ValueError("need retry period < renew deadline < lease duration")
        self.api, self.identity = api, identity
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.create_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name, self.lease_s, self.renew_deadline_s, self.retry_s = name, lease_s, renew_deadline_s, retry_s
        self._leader = threading.Event()
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0

    def is_leader(self) -> bool:
        """True only while the lease is held and was renewed within the renew deadline."""
        return self._leader.is_set() and time.monotonic() - self._last_renew < self.renew_deadline_s

    def try_acquire_or_renew(self) -> bool:
        status, lease = self.api.request("GET", self.path)
        now = _now()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_s),
            "acquireTime": now, "renewTime": now, "leaseTransitions": 0,
        }
        if status == 404:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name}, "spec": spec}
            return self.api.request("POST", self.create_path, body)[0] == 201
        if status != 200:
            return False
        old = lease.get("spec") or {}
        record = (old.get("holderIdentity"), old.get("renewTime"), old.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        holder = old.get("holderIdentity")
        duration = float(old.get("leaseDurationSeconds") or self.lease_s)
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False
        transitions = int(old.get("leaseTransitions") or 0)
        if holder == self.identity:
            spec["acquireTime"] = old.get("acquireTime") or now
            spec["leaseTransitions"] = transitions
        else:
            spec["leaseTransitions"] = transitions + 1
        lease["spec"] = spec  # metadata keeps the resourceVersion read above: optimistic concurrency
        ok = self.api.request("PUT", self.path, lease)[0] == 200
        if ok:
            self._observed, self._observed_at = (self.identity, now, spec["leaseTransitions"]), time.monotonic()
        return ok

    def run(self, stop: threading.Event, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        """Campaign until ``stop``; call ``on_started`` on winning and ``on_stopped`` on losing the lease."""
        while not stop.is_set():
            try:
                ok = self.try_acquire_or_renew()
            except Exception as exc:  # the API server is unreachable: same as a failed round
                log.warning("lease round failed", extra={"error": repr(exc)})
                ok = False
            now = time.monotonic()
            if ok:
                self._last_renew = now
                if not self._leader.is_set():
                    self._leader.set()
                    log.info("became leader", extra={"identity": self.identity, "lease": self.name})
                    on_started()
            elif self._leader.is_set() and now - self._last_renew >= self.renew_deadline_s:
                self._leader.clear()
                log.warning("lost the lease", extra={"identity": self.identity})
                on_stopped()
                return
            stop.wait(self.retry_s)

    def release(self) -> None:
        """Give the lease up on a clean exit so the standby need not wait for it to expire."""
        self._leader.clear()
        status, lease = self.api.request("GET", self.path)
        if status == 200 and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            self.api.request("PUT", self.path, lease)
