"""The gang queue: one global order, one transaction per gang group, no partial holds.

Pods of a gang arrive one by one (as the operator creates them). A gang is *ready* once at least
``min_member`` of its pods have arrived; a gang group is ready when all its gangs are. Each cycle
walks ready groups in one global order (priority high first, then declaration order, then name)
and plans every gang of the group inside one ``ClusterView``; the view is committed only if all of
them fit. Nothing is reserved for a gang that is waiting for pods or for capacity, so two gangs can
never each hold half of what the other needs (scheduler-plugins#117, koordinator#872): whichever
group is first in the order and fits completes, the other waits holding nothing.

A group that does not fit does not block the ones behind it (no head-of-line blocking,
kube-batch#514); the price is that a large gang can wait while small ones keep fitting, which
aging or a reservation for the head group would address (not implemented).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler.gang import Gang, GangPlan, plan_gangs
from scheduler.model import Cluster, ModelError
from scheduler.view import ClusterView


@dataclass
class _Pending:
    gang: Gang
    group: str
    seq: int
    arrived: set[str] = field(default_factory=set)

    def ready(self) -> bool:
        return len(self.arrived) >= self.gang.need

    def arrived_gang(self) -> Gang:
        members = tuple(m for m in self.gang.members if m.name in self.arrived)
        need = min(self.gang.need, len(members))
        rigid = need == len(members)
        return Gang(self.gang.name, members, 0 if rigid else need, self.gang.priority, self.gang.max_level)


class GangQueue:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._pending: dict[str, _Pending] = {}
        self._seq = 0
        self.placed: dict[str, GangPlan] = {}

    def declare(self, gang: Gang, group: str | None = None) -> None:
        """Announce a gang (its pods arrive later). ``group`` ties gangs that must start together."""
        if gang.name in self._pending or gang.name in self.placed:
            raise ModelError(f"gang {gang.name} is already declared")
        self._pending[gang.name] = _Pending(gang, group or gang.name, self._seq)
        self._seq += 1

    def arrive(self, gang: str, pod: str) -> None:
        pending = self._pending.get(gang)
        if pending is None:
            raise ModelError(f"pod {pod} arrived for unknown or already placed gang {gang}")
        if pod not in {m.name for m in pending.gang.members}:
            raise ModelError(f"pod {pod} is not a member of gang {gang}")
        pending.arrived.add(pod)

    def holding(self, gang: str) -> int:
        """Members of a gang that hold capacity right now."""
        return sum(1 for a in self.cluster.allocations.values() if a.group == gang)

    def cycle(self) -> list[str]:
        """Try every ready group once, in the global order; return the gangs placed."""
        groups: dict[str, list[_Pending]] = {}
        for pending in self._pending.values():
            groups.setdefault(pending.group, []).append(pending)
        order = sorted(
            groups.values(),
            key=lambda ps: (-max(p.gang.priority for p in ps), min(p.seq for p in ps), ps[0].group),
        )
        placed: list[str] = []
        for members in order:
            if not all(p.ready() for p in members):
                continue
            members.sort(key=lambda p: p.seq)
            view = ClusterView(self.cluster)
            plans = plan_gangs(
                view, [p.gang if len(p.arrived) == len(p.gang.members) else p.arrived_gang() for p in members]
            )
            if plans is None:
                continue
            view.commit()
            for plan in plans:
                self.placed[plan.gang] = plan
                del self._pending[plan.gang]
                placed.append(plan.gang)
        return placed
