"""Scheduling units from pending pods: a gang (PodGroup or Koordinator annotations) or a single pod.

A gang is one transaction: its pending members are planned together with ``min_member`` = what it
still needs (minMember minus members already bound or assumed), so it is bound only when that many
fit. Bad input (minMember above the gang's pods, a missing PodGroup, an unreadable annotation) makes
a unit with a ``problem``: nothing of it is planned, and the problem becomes an event.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.gang import Gang
from scheduler.live.cache import PodState

DEFAULT_GANG_TIMEOUT_S = 60.0  # scheduler-plugins' PermitWaitingTimeSeconds default


@dataclass
class Unit:
    key: str  # gang "namespace/name" or the pod's key
    pods: list[PodState]  # pending members, in rank (name) order
    need: int  # members that must fit together (0 for a single pod: it is itself)
    gang: str | None = None
    problem: str | None = None
    timeout_s: float = DEFAULT_GANG_TIMEOUT_S
    order: tuple[Any, ...] = field(default=())
    short: bool = False  # the problem is only that fewer pods than minMember exist (yet)

    def core_gang(self) -> Gang:
        members = tuple(p.spec for p in self.pods)
        min_member = min(self.need, len(members)) if self.gang else 0
        return Gang(self.key, members, min_member, priority=max(p.priority for p in self.pods))


def collect(pending: list[PodState], pods: Mapping[str, PodState], podgroups: Mapping[str, Any],
            holding: Container[str], default_timeout: float = DEFAULT_GANG_TIMEOUT_S,
            gang_members: Mapping[str, Iterable[str]] | None = None) -> list[Unit]:
    """Units in queue order: priority (high first), then the oldest member's creation, then key.

    ``holding``: pods that already hold resources (bound or assumed); they count toward minMember.
    ``gang_members``: gang key -> its pods' keys (the cache's index), so that a cycle does not walk
    every pod to find the members of the waiting gangs.
    """
    singles: list[Unit] = []
    gangs: dict[str, list[PodState]] = {}
    for pod in pending:
        if pod.gang is None:
            singles.append(Unit(pod.key, [pod], 0))
        else:
            gangs.setdefault(pod.gang.key, []).append(pod)
    members_of: dict[str, list[PodState]] = {}
    if gang_members is not None:
        for key in gangs:
            members_of[key] = [pods[k] for k in gang_members.get(key, ()) if k in pods]
    else:
        for pod in pods.values():
            if pod.gang is not None and pod.gang.key in gangs:
                members_of.setdefault(pod.gang.key, []).append(pod)
    units = singles
    for key, waiting in gangs.items():
        waiting.sort(key=lambda p: p.name)
        ref = waiting[0].gang
        assert ref is not None
        members = members_of.get(key, waiting)
        held = sum(1 for p in members if p.key in holding)
        unit = Unit(key, waiting, 0, gang=key, timeout_s=ref.timeout_s or default_timeout)
        minimum: int | None = ref.min_member
        if ref.kind == "PodGroup":
            group = podgroups.get(key)
            if group is None:
                unit.problem = f"gang {key}: PodGroup {key} not found"
            else:
                spec = group.get("spec") or {}
                minimum = int(spec.get("minMember") or 1)
                if spec.get("scheduleTimeoutSeconds"):
                    unit.timeout_s = float(spec["scheduleTimeoutSeconds"])
        if unit.problem is None:
            if minimum is None or minimum < 1:
                unit.problem = f"gang {key}: min-available must be a positive integer"
            elif minimum > len(members):
                unit.short = True
                unit.problem = (f"gang {key}: minMember {minimum} but only {len(members)} pods exist; "
                                f"nothing is bound until {minimum} can be placed together")
            else:
                unit.need = max(minimum - held, 1)
        units.append(unit)
    for unit in units:
        unit.order = (-max(p.priority for p in unit.pods), min(p.created for p in unit.pods), unit.key)
    units.sort(key=lambda u: u.order)
    return units
