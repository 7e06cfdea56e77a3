"""PodGroup status, as scheduler-plugins' PodGroupStatus: phase, running, succeeded, failed,
scheduleStartTime, plus ``scheduled`` (members bound to a node; a railnet extension, as older
scheduler-plugins releases had it).

Phases follow scheduler-plugins' constants, with M = spec.minMember: ``Failed`` once a member failed,
``Finished`` when M succeeded, ``Running`` when M run, ``Scheduling`` when M are bound but fewer than M
run yet, else ``Pending``. The pod watch leaves out terminal pods, so succeeded/failed are the members
this scheduler saw finish, never fewer than what the stored status already says (a new leader keeps
the counts of the previous one).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from scheduler.live.cache import PodState, SchedulerCache
from scheduler.live.status import StatusWriter

JSON = dict[str, Any]
PODGROUPS = "/apis/scheduling.x-k8s.io/v1alpha1/podgroups"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def desired(group: Mapping[str, Any], members: Iterable[PodState], finished: Mapping[str, str]) -> JSON:
    old = group.get("status") or {}
    minimum = int((group.get("spec") or {}).get("minMember") or 1)
    live = list(members)
    scheduled = sum(1 for p in live if p.node)
    running = sum(1 for p in live if p.node and p.phase == "Running")
    succeeded = max(sum(1 for v in finished.values() if v == "Succeeded"), int(old.get("succeeded") or 0))
    failed = max(sum(1 for v in finished.values() if v == "Failed"), int(old.get("failed") or 0))
    if failed:
        phase = "Failed"
    elif succeeded >= minimum:
        phase = "Finished"
    elif running >= minimum:
        phase = "Running"
    elif scheduled >= minimum:
        phase = "Scheduling"
    else:
        phase = "Pending"
    status: JSON = {"phase": phase, "scheduled": scheduled, "running": running, "succeeded": succeeded,
                    "failed": failed}
    start = old.get("scheduleStartTime") or (_now() if live else None)
    if start:
        status["scheduleStartTime"] = start
    if old.get("occupiedBy"):
        status["occupiedBy"] = old["occupiedBy"]
    return status


class PodGroupStatusWriter:
    def __init__(self, writer: StatusWriter, every_s: float = 0.5) -> None:
        self.writer, self.every_s = writer, every_s
        self._last = float("-inf")

    def sync(self, cache: SchedulerCache, now: float) -> int:
        """Write the status of every PodGroup whose status changed (at most every ``every_s``)."""
        if now - self._last < self.every_s:
            return 0
        self._last = now
        sent = 0
        for key, group in cache.podgroups.items():
            members = [cache.pods[k] for k in cache.gang_members.get(key, ()) if k in cache.pods]
            status = desired(group, members, cache.gang_finished.get(key, {}))
            old = group.get("status") or {}
            if old.get("scheduleStartTime") is None and not members:
                continue  # nothing has happened to this group yet
            sent += self.writer.write(group, status)
        return sent
