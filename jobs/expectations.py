"""Expectations: what this controller created or deleted and its watch has not shown yet.

A reconcile that runs on a cache older than its own last writes would create a replica twice (or
delete one twice). So each create/delete is recorded here by object key before it is sent, the
watch handlers ``observe`` them, and a job whose expectations are not met is not reconciled (KubeDL
``pkg/job_controller/expectations.go``, client-go ``ControllerExpectations``). A failed write is
``lowered`` at once; expectations older than ``ttl`` are dropped, so a lost event only delays.
"""

from __future__ import annotations

import threading
import time


class Expectations:
    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._pending: dict[str, dict[str, float]] = {}  # job key -> {"add:Pod/ns/name" | "del:<uid>": t}
        self._lock = threading.Lock()

    def expect(self, job: str, item: str) -> None:
        with self._lock:
            self._pending.setdefault(job, {})[item] = time.monotonic()

    def observe(self, job: str, item: str) -> None:
        with self._lock:
            pending = self._pending.get(job)
            if pending is not None:
                pending.pop(item, None)
                if not pending:
                    del self._pending[job]

    lower = observe  # a write that failed will never be observed

    def satisfied(self, job: str) -> bool:
        now = time.monotonic()
        with self._lock:
            pending = self._pending.get(job)
            if not pending:
                return True
            for item, at in list(pending.items()):
                if now - at > self.ttl:
                    del pending[item]
            if not pending:
                del self._pending[job]
                return True
            return False

    def pending(self, job: str) -> list[str]:
        with self._lock:
            return sorted(self._pending.get(job, {}))

    def delete(self, job: str) -> None:
        with self._lock:
            self._pending.pop(job, None)
