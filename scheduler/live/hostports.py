"""Host ports in `railnet scheduler`: kube-scheduler's NodePorts filter, plus the node agent's host listeners.

A pod's host ports are the ``hostPort`` entries (> 0) of its containers and of its restartable
(sidecar) init containers, as kube-scheduler's ``GetHostPorts`` reads them; protocol defaults to TCP
and ``hostIP`` to 0.0.0.0. Two of them conflict as in kube-scheduler's ``HostPortInfo.CheckConflict``:
same protocol and port, and the same ``hostIP`` or either one 0.0.0.0. (The API server defaults a
``hostNetwork`` pod's ``hostPort`` to its ``containerPort``, so host-network pods are covered too.)

A node is ruled out for a pod when a pod holding it (bound, or assumed by this scheduler) declares a
conflicting port, or when the node's ``railnet.io/host-listeners`` annotation (written by the node
agent, ``netmanager/host_listeners.py``; read with the job controller's parser ``jobs.ports.parse_ports``)
lists the port of a TCP host port: a host process listening on any address holds it.

Members of one gang that declare conflicting ports must land on different nodes: ``plan_gang`` keeps
the core's plan when it already separates them, else places the members one at a time, each kept off
the nodes of the members before it that hold a conflicting port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from jobs.ports import parse_ports
from netmanager import host_listeners
from scheduler import gang as core
from scheduler.live import explain
from scheduler.model import Allocation
from scheduler.view import ClusterView

ANY_IP = "0.0.0.0"
HOST_LISTENERS = host_listeners.ANNOTATION  # on a Node: "22,2379-2380" (the agent writes it)


@dataclass(frozen=True, order=True)
class HostPort:
    port: int
    protocol: str = "TCP"
    ip: str = ANY_IP

    def conflicts(self, other: HostPort) -> bool:
        return (self.port == other.port and self.protocol == other.protocol
                and (self.ip == other.ip or ANY_IP in (self.ip, other.ip)))

    def __str__(self) -> str:
        where = "" if self.ip == ANY_IP else f"{self.ip}:"
        return f"{where}{self.port}" + ("" if self.protocol == "TCP" else f"/{self.protocol}")


def of_pod(pod: Mapping[str, Any]) -> tuple[HostPort, ...]:
    """The host ports a pod declares, sorted, without repeats."""
    spec = pod.get("spec") or {}
    containers = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    containers += spec.get("containers") or []
    out: set[HostPort] = set()
    for container in containers:
        for entry in container.get("ports") or []:
            port = entry.get("hostPort")
            if isinstance(port, int) and port > 0:
                out.add(HostPort(port, entry.get("protocol") or "TCP", entry.get("hostIP") or ANY_IP))
    return tuple(sorted(out))


@lru_cache(maxsize=1024)
def _listeners(text: str) -> frozenset[int]:
    try:
        return frozenset(parse_ports(text))
    except ValueError:  # an unreadable annotation protects nothing; the agent owns its format
        return frozenset()


def listeners_of(node: Mapping[str, Any]) -> frozenset[int]:
    """Ports host processes listen on, from the node's ``railnet.io/host-listeners`` annotation."""
    text = ((node.get("metadata") or {}).get("annotations") or {}).get(HOST_LISTENERS)
    return _listeners(text) if text else frozenset()


def excluded(wanted: Sequence[HostPort], held: Mapping[int, Iterable[HostPort]],
             listeners: Mapping[int, frozenset[int]]) -> tuple[list[int], dict[str, int]]:
    """Node indices where a port of ``wanted`` is taken, and how many nodes per reason.

    ``held``: node index -> ports of the pods holding that node; ``listeners``: node index -> ports
    its host processes listen on. A node is counted once, under the first port found taken."""
    out: list[int] = []
    reasons: dict[str, int] = {}
    for index in sorted(set(held) | set(listeners)):
        why = _taken(wanted, held.get(index, ()), listeners.get(index, frozenset()))
        if why:
            out.append(index)
            reasons[why] = reasons.get(why, 0) + 1
    return out, reasons


def _taken(wanted: Sequence[HostPort], held: Iterable[HostPort], listening: frozenset[int]) -> str | None:
    held = list(held)
    for want in wanted:
        if any(want.conflicts(h) for h in held):
            return f"host port {want} taken"
        if want.protocol == "TCP" and want.port in listening:
            return f"host port {want} taken by a host process"
    return None


# -- gangs ------------------------------------------------------------------------------------------


class Member(Protocol):
    """What ``plan_gang`` needs of a pod (``cache.PodState`` has it)."""

    key: str

    @property
    def constraints(self) -> Any: ...


def _ports(pod: Member) -> tuple[HostPort, ...]:
    return tuple(getattr(pod.constraints, "host_ports", ()))


def members_conflict(pods: Sequence[Member]) -> bool:
    """Do two members declare a conflicting host port?"""
    seen: list[HostPort] = []
    for pod in pods:
        mine = _ports(pod)
        if any(m.conflicts(s) for m in mine for s in seen):
            return True
        seen += mine
    return False


def apart(pods: Sequence[Member], allocations: Iterable[Allocation]) -> bool:
    """Does every node of the plan hold at most one member of each conflicting port?"""
    by_key = {p.key: _ports(p) for p in pods}
    on_node: dict[int, list[HostPort]] = {}
    for alloc in allocations:
        mine = by_key.get(alloc.pod, ())
        there = on_node.setdefault(alloc.node, [])
        if any(m.conflicts(t) for m in mine for t in there):
            return False
        there += mine
    return True


Taken = Callable[[Any], tuple[list[int], dict[str, int]]]  # constraints -> nodes where its ports are taken


def plan_gang(view: ClusterView, gang: core.Gang, pods: Sequence[Member], taken: Taken | None = None,
              gpu: str = "nvidia.com/gpu", rdma: str = "rdma/roce") -> tuple[core.GangPlan | None, str | None]:
    """The core's ``plan_gang`` with host ports respected: each member kept off the nodes where its
    ports are taken (``taken``, e.g. ``SchedulerCache.host_ports_taken``), and members that share a
    port on different nodes.

    Returns the plan (reserved in ``view``) or None, and why when host ports were the obstacle (None
    when the unit does not fit even without them: the caller's message says why)."""
    per = [taken(p.constraints) if taken is not None and _ports(p) else ([], {}) for p in pods]
    conflict = len(pods) > 1 and members_conflict(pods)
    if not conflict and not any(blocked for blocked, _ in per):
        return core.plan_gang(view, gang), None
    if len(pods) == 1:
        trial = view.child()
        for index in per[0][0]:
            trial.block(index)
        plan = core.plan_gang(trial, gang)
        if plan is not None:
            view.absorb(trial)
            return plan, None
        if core.plan_gang(view.child(), gang) is None:
            return None, None  # it does not fit even where its ports are free
        return None, _reason(trial, view, gang.members[0], per[0], gpu, rdma)
    trial = view.child()
    plan = core.plan_gang(trial, gang)
    if plan is not None and apart(pods, plan.allocations) and all(
            a.node not in set(blocked) for a, (blocked, _) in zip(plan.allocations, _by_alloc(pods, per, plan),
                                                                   strict=True)):
        view.absorb(trial)
        return plan, None
    return _in_turn(view, gang, pods, per, gpu, rdma)


def _by_alloc(pods: Sequence[Member], per: list[tuple[list[int], dict[str, int]]],
              plan: core.GangPlan) -> list[tuple[list[int], dict[str, int]]]:
    index = {p.key: i for i, p in enumerate(pods)}
    return [per[index[a.pod]] for a in plan.allocations]


def _reason(trial: ClusterView, view: ClusterView, member: Any, mine: tuple[list[int], dict[str, int]], gpu: str,
            rdma: str, extra: Mapping[str, int] | None = None) -> str:
    """explain.pod_reason with the port reasons, and the nodes the caller had already blocked counted
    as "other filters" (taints, selector, affinity, reservation: the caller's event lists them)."""
    ports = set(mine[0])
    before = [i for i in range(len(view.cluster.nodes)) if i not in ports and view.node(i).cpu_free < 0]
    reasons = {**mine[1], **(extra or {})}
    if before:
        reasons["the pod's other filters"] = len(before)
    blocked = sorted(ports | set(before) | set(_blocked_by_members(trial, view)))
    return explain.pod_reason(trial, member, blocked, reasons, gpu, rdma)


def _blocked_by_members(trial: ClusterView, view: ClusterView) -> list[int]:
    """Nodes blocked in ``trial`` but not in ``view`` (ports or earlier members)."""
    return [i for i in range(len(view.cluster.nodes)) if trial.node(i).cpu_free < 0 <= view.node(i).cpu_free]


def _in_turn(view: ClusterView, gang: core.Gang, pods: Sequence[Member], per: list[tuple[list[int], dict[str, int]]],
             gpu: str, rdma: str) -> tuple[core.GangPlan | None, str | None]:
    """Members in rank order, each off the nodes where its ports are taken and where an earlier member
    holds a conflicting port (and, for a gang with a required level, inside the first member's domain);
    all or nothing."""
    cluster = view.cluster
    work = view.child()
    allocs: list[Allocation] = []
    on_node: dict[int, list[HostPort]] = {}
    first_out: str | None = None
    for pod, member, (taken_here, taken_why) in zip(pods, gang.members, per, strict=True):
        mine = _ports(pod)
        trial = work.child()
        by_members, reasons = excluded(mine, on_node, {})
        blocked = set(taken_here) | set(by_members)
        if gang.max_level is not None and allocs:
            domain = cluster.domains.domain_of(allocs[0].node, gang.max_level)
            blocked |= {n.index for n in cluster.nodes if cluster.domains.domain_of(n.index, gang.max_level) != domain}
        for index in blocked:
            trial.block(index)
        one = core.plan_gang(trial, core.Gang(gang.name, (member,), 0, gang.priority))
        if one is None:
            if first_out is None:
                ours = {f"{why} by another member of the gang": n for why, n in reasons.items()}
                first_out = f"member {pod.key}: {_reason(trial, view, member, (taken_here, taken_why), gpu, rdma, ours)}"
            continue
        work.absorb(trial)
        allocs += one.allocations
        on_node.setdefault(one.allocations[0].node, []).extend(mine)
    if len(allocs) >= gang.need:
        view.absorb(work)
        first = allocs[0].node
        return core.GangPlan(gang.name, tuple(allocs), 0, cluster.domains.domain_of(first, 0)), None
    return None, f"gang {gang.name}: {len(allocs)} of {gang.need} members fit; {first_out}"
