"""Gang placement: every member gets a node and devices in one transaction, or nothing is reserved.

Across nodes (homogeneous gangs, the common case of N identical workers):

1. ``slots``: how many members each node can hold, by planning copies of the member on it
   (memoised by node state, so identical nodes cost one computation);
2. ``target`` = as many members as possible, at most N; fewer than min_member means no placement;
3. the narrowest network level (leaf < spine < zone < cluster) with a domain holding ``target``;
   among those domains the tightest (fewest spare slots), then by name;
4. inside it, children are filled the Kueue way: the biggest ones first, but the last one is the
   smallest child that still fits, which leaves the fewest half-used switches and nodes;
5. ranks are handed out walking the chosen domains in label order, so consecutive ranks share a
   node, then a leaf, then a spine.

Gangs whose members differ (say a launcher plus workers) are placed greedily, member by member in
rank order, trying narrow domains first.

A one-pod job is not a gang problem: it goes through ``policies.decide`` with the railnet policy
(the one the trace replay measures), learning its workload from the pods planned on the cluster.
Its candidates are the cluster's groups of nodes in one state (``Cluster.states``), one score per
distinct state, not one per node.
Multi-member gangs keep the domain/slot logic above: their objective is network locality and
all-or-nothing, which a per-node score does not express. Both paths reserve in a ``ClusterView``; the caller
commits the view, so a gang that does not fit never holds capacity.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TypeVar
from weakref import WeakKeyDictionary

from scheduler.domains import DomainId
from scheduler.intranode import DeviceRequest, plan_devices
from scheduler.model import Allocation, Cluster, ModelError, Node, PodSpec, StateKey, state_key
from scheduler.placement import place_on_node
from scheduler.policies import Hint, Policy, Score, decide, live_policy
from scheduler.topology import CompactTopology
from scheduler.view import ClusterView

_TIES = random.Random(0)  # only a uniform (random) policy draws from it


@dataclass(frozen=True, slots=True)
class Gang:
    """Members in rank order. ``min_member`` 0 means all of them (a rigid gang)."""

    name: str
    members: tuple[PodSpec, ...]
    min_member: int = 0
    priority: int = 0
    max_level: int | None = None  # required: all members inside one domain of this level

    def __post_init__(self) -> None:
        if not self.members:
            raise ModelError(f"gang {self.name}: no members")
        if not 0 <= self.min_member <= len(self.members):
            raise ModelError(f"gang {self.name}: min_member {self.min_member} not in 0..{len(self.members)}")
        if len({m.name for m in self.members}) != len(self.members):
            raise ModelError(f"gang {self.name}: member names must be unique")

    @property
    def need(self) -> int:
        return self.min_member or len(self.members)


@dataclass(frozen=True, slots=True)
class GangPlan:
    gang: str
    allocations: tuple[Allocation, ...]  # placed members, rank order
    level: int  # network level of the domain that holds them all
    domain: DomainId


def plan_gang(view: ClusterView, gang: Gang, policy: Policy | None = None) -> GangPlan | None:
    """Reserve the gang in ``view`` and return the plan, or return None and leave ``view`` as it was.

    ``policy`` places one-pod jobs (default: the cluster's live railnet policy)."""
    if len(gang.members) == 1:
        return _plan_single(view, gang, policy or live_policy(view.cluster))
    shape = gang.members[0].shape()
    if all(m.shape() == shape for m in gang.members):
        return _plan_homogeneous(view, gang)
    return _plan_greedy(view, gang)


def plan_gangs(
    view: ClusterView, gangs: Sequence[Gang], policy: Policy | None = None
) -> list[GangPlan] | None:
    """A gang group: all gangs placed together, or none (Koordinator's GangGroup semantics)."""
    trial = view.child()
    plans = []
    for gang in gangs:
        plan = plan_gang(trial, gang, policy)
        if plan is None:
            return None
        plans.append(plan)
    view.absorb(trial)
    return plans


def _plan_single(view: ClusterView, gang: Gang, policy: Policy) -> GangPlan | None:
    """One pod: the node ``policy`` scores best (``decide``, as in the trace replay).

    Ties go to the tightest node: for whole GPUs the fewest fully free GPUs in the cluster (best
    fit), then the lowest node index; for other pods the lowest node index. Nodes are visited per
    state (``Cluster.states``): each group of equal nodes is scored once and stands for its
    lowest-index member, and nodes this view already changed are scored on their own.
    """
    pod = gang.members[0]
    policy.observe(pod)
    if policy.uniform:
        index, hint = _scan_uniform(view, pod, policy)
    else:
        index, hint = _choose_by_state(view, pod, policy)
    if index is None:
        return None
    alloc = policy.allocate(view.node(index), pod, hint, _TIES)
    if alloc is None:
        return None
    alloc = replace(alloc, group=gang.name)
    view.reserve(alloc)
    return GangPlan(gang.name, (alloc,), 0, view.cluster.domains.domain_of(index, 0))


class _ScoreCache:
    """Scores by (pod shape, node state) of the policy last used on one cluster.

    Valid while the policy's learned values stay: a policy that learns (railnet) bumps ``version``
    whenever ``observe`` or ``reset`` changes what ``evaluate`` returns; a policy without a
    ``version`` attribute gets a fresh table for every decision (scores kept within one call).
    """

    LIMIT = 1 << 16  # entries; past it the table starts over (policies that never refresh)

    def __init__(self) -> None:
        self.policy: Policy | None = None
        self.version: object = None
        self.size = 0
        self.tables: dict[tuple[object, ...], dict[StateKey, tuple[Score, Hint] | None]] = {}

    def table(self, policy: Policy, pod: PodSpec) -> dict[StateKey, tuple[Score, Hint] | None]:
        version = getattr(policy, "version", None)
        if policy is not self.policy or version is None or version != self.version or self.size > self.LIMIT:
            self.policy, self.version, self.size = policy, version, 0
            self.tables = {}
        table = self.tables.get(pod.shape())
        if table is None:
            table = self.tables[pod.shape()] = {}
        return table


_SCORES: WeakKeyDictionary[Cluster, _ScoreCache] = WeakKeyDictionary()


def _choose_by_state(view: ClusterView, pod: PodSpec, policy: Policy) -> tuple[int | None, Hint]:
    cluster = view.cluster
    cache = _SCORES.get(cluster)
    if cache is None:
        cache = _SCORES[cluster] = _ScoreCache()
    table = cache.table(policy, pod)
    need = pod.whole_gpus
    changed = view.changed()
    # candidates: (node index, fully free GPUs in the cluster, its state here)
    candidates: list[tuple[int, int, StateKey]] = []
    for group in cluster.states().groups.values():
        if group.whole_free >= need:
            first = group.first(changed)
            if first is not None:
                candidates.append((first, group.whole_free, group.key))
    for index in changed:
        whole = cluster.nodes[index].whole_free.bit_count()
        if whole >= need:  # the cluster's best-fit index holds it (the view only takes devices away)
            candidates.append((index, whole, state_key(view.node(index))))

    def evaluate(cand: tuple[int, int, StateKey]) -> tuple[Score, Hint] | None:
        index, _, key = cand
        if key in table:
            return table[key]
        entry = table[key] = policy.evaluate(view.node(index), pod)
        cache.size += 1
        return entry

    def rank(cand: tuple[int, int, StateKey]) -> tuple[int, ...]:
        return (cand[1], cand[0]) if need else (cand[0],)

    chosen = decide(policy, pod, candidates, evaluate, rank, _TIES)
    if chosen is None:
        return None, None
    return chosen[0][0], chosen[1]


def _scan_uniform(view: ClusterView, pod: PodSpec, policy: Policy) -> tuple[int | None, Hint]:
    """A uniform (random) policy draws among all tied nodes: every candidate node is visited."""
    scored: dict[StateKey, tuple[Score, Hint] | None] = {}

    def evaluate(cand: tuple[int, int]) -> tuple[Score, Hint] | None:
        node = view.node(cand[1])
        key = state_key(node)
        if key not in scored:
            scored[key] = policy.evaluate(node, pod)
        return scored[key]

    chosen = decide(policy, pod, enumerate(_candidates(view, pod)), evaluate, lambda c: (c[0],), _TIES)
    if chosen is None:
        return None, None
    return chosen[0][1], chosen[1]


# -- homogeneous gangs --------------------------------------------------------------------------



def _candidates(view: ClusterView, pod: PodSpec) -> Iterable[int]:
    cluster = view.cluster
    if pod.whole_gpus:
        return cluster.nodes_with_whole_free(pod.whole_gpus)
    return range(len(cluster.nodes))


def slots(node: Node, pod: PodSpec, cap: int) -> int:
    """How many copies of ``pod`` fit on ``node`` as it is now (at most ``cap``)."""
    if cap <= 0 or not node.fits_host(pod):
        return 0
    shares = tuple(node.gpu_free_milli) if pod.shares_gpu else ()
    return _slots(
        node.topology,
        node.whole_free,
        node.nic_free,
        node.cpu_free,
        node.memory_free,
        shares,
        pod.cpu_milli,
        pod.memory_mib,
        pod.gpu_milli,
        pod.device_request(),
        cap,
    )


@lru_cache(maxsize=1 << 16)
def _slots(
    topo: CompactTopology,
    whole_free: int,
    nic_free: int,
    cpu_free: int,
    mem_free: int,
    shares: tuple[int, ...],
    cpu: int,
    mem: int,
    gpu_milli: int,
    request: DeviceRequest,
    cap: int,
) -> int:
    count = 0
    free_shares = list(shares)
    while count < cap and cpu <= cpu_free and mem <= mem_free:
        if free_shares:  # a GPU share: best fit, like placement.best_fit_share
            fitting = [(left, gpu) for gpu, left in enumerate(free_shares) if left >= gpu_milli]
            if not fitting or request.nics > nic_free.bit_count():
                break
            left, gpu = min(fitting)
            free_shares[gpu] -= gpu_milli
            nic_free = _drop_lowest(nic_free, request.nics)
        else:
            plan = plan_devices(topo, whole_free, nic_free, request)
            if plan is None:
                break
            whole_free &= ~plan.gpu_mask
            nic_free &= ~plan.nic_mask
        cpu_free -= cpu
        mem_free -= mem
        count += 1
        if cpu == 0 and mem == 0 and not request.gpus and not request.nics and not free_shares:
            return cap  # a pod that asks for nothing fits any number of times
    return count


def _drop_lowest(mask: int, count: int) -> int:
    for _ in range(count):
        mask &= mask - 1
    return mask


Key = TypeVar("Key", int, DomainId)


def _pick(items: list[tuple[int, Key]], need: int) -> list[tuple[Key, int]]:
    """Kueue BestFit: take the biggest children while none fits alone, then the tightest that fits."""
    remaining = sorted(items, key=lambda item: (-item[0], item[1]))
    chosen: list[tuple[Key, int]] = []
    while need > 0 and remaining:
        fitting = [item for item in remaining if item[0] >= need]
        if fitting:
            cap, ident = min(fitting, key=lambda item: (item[0], item[1]))
            chosen.append((ident, need))
            return chosen
        cap, ident = remaining.pop(0)
        chosen.append((ident, cap))
        need -= cap
    return chosen


def _plan_homogeneous(view: ClusterView, gang: Gang) -> GangPlan | None:
    pod = gang.members[0]
    total_members = len(gang.members)
    node_slots: dict[int, int] = {}
    for index in _candidates(view, pod):
        count = slots(view.node(index), pod, total_members)
        if count:
            node_slots[index] = count
    domains = view.cluster.domains
    sums: list[dict[DomainId, int]] = [{} for _ in range(domains.levels)]
    for index, count in node_slots.items():
        for level, dom in enumerate(domains.paths[index]):
            sums[level][dom] = sums[level].get(dom, 0) + count
    top = domains.levels - 1 if gang.max_level is None else min(gang.max_level, domains.levels - 1)
    best_at_top = max(sums[top].values(), default=0)
    target = min(total_members, best_at_top)
    if target < gang.need:
        return None
    for level in range(top + 1):
        fitting = [(count, dom) for dom, count in sums[level].items() if count >= target]
        if not fitting:
            continue
        _, dom = min(fitting)
        order = _distribute(view, level, dom, target, node_slots, sums)
        trial = view.child()
        allocations: list[Allocation] = []
        members = iter(gang.members[:target])
        for index, count in order:
            for _ in range(count):
                member = next(members)
                alloc = place_on_node(trial.node(index), member, group=gang.name)
                if alloc is None:  # cannot happen: slots were counted on this very state
                    raise ModelError(f"gang {gang.name}: node {index} lost a slot while planning")
                trial.reserve(alloc)
                allocations.append(alloc)
        view.absorb(trial)
        return GangPlan(gang.name, tuple(allocations), level, dom)
    return None


def _distribute(
    view: ClusterView,
    level: int,
    dom: DomainId,
    take: int,
    node_slots: dict[int, int],
    sums: list[dict[DomainId, int]],
) -> list[tuple[int, int]]:
    """(node, members) in rank order for ``take`` members inside ``dom``."""
    domains = view.cluster.domains
    if level == 0:
        nodes = [(node_slots[i], i) for i in domains.members[0][dom] if i in node_slots]
        return sorted(_pick(nodes, take))
    kids = [(sums[level - 1][kid], kid) for kid in domains.children[level][dom] if sums[level - 1].get(kid)]
    out: list[tuple[int, int]] = []
    for kid, count in sorted(_pick(kids, take)):
        out.extend(_distribute(view, level - 1, kid, count, node_slots, sums))
    return out


# -- heterogeneous gangs ------------------------------------------------------------------------


def _plan_greedy(view: ClusterView, gang: Gang) -> GangPlan | None:
    domains = view.cluster.domains
    top = domains.levels - 1 if gang.max_level is None else min(gang.max_level, domains.levels - 1)
    gpus_needed = sum(m.whole_gpus for m in gang.members[: gang.need])
    best: tuple[int, ClusterView, list[Allocation], int, DomainId] | None = None
    for level in range(top + 1):
        order = sorted((free, dom) for dom, free in domains.whole_free[level].items() if free >= gpus_needed)
        for _, dom in order:
            trial = view.child()
            placed = _fill_domain(trial, gang, domains.members[level][dom])
            if len(placed) == len(gang.members):
                view.absorb(trial)
                return GangPlan(gang.name, tuple(placed), level, dom)
            if len(placed) >= gang.need and (best is None or len(placed) > best[0]):
                best = (len(placed), trial, placed, level, dom)
    if best is None:
        return None
    _, trial, placed, level, dom = best
    view.absorb(trial)
    return GangPlan(gang.name, tuple(placed), level, dom)


def _fill_domain(trial: ClusterView, gang: Gang, nodes: list[int]) -> list[Allocation]:
    """Members in rank order, each next to the previous one when possible, else on the tightest node."""
    placed: list[Allocation] = []
    previous: int | None = None
    for member in gang.members:
        alloc = None
        if previous is not None:
            alloc = place_on_node(trial.node(previous), member, group=gang.name)
        if alloc is None:
            options = []
            for index in nodes:
                node = trial.node(index)
                found = place_on_node(node, member, group=gang.name)
                if found is not None:
                    options.append((node.whole_free.bit_count() - len(found.gpus), index, found))
            if options:
                alloc = min(options, key=lambda o: (o[0], o[1]))[2]
        if alloc is None:
            continue  # an elastic member that does not fit; min_member decides
        trial.reserve(alloc)
        placed.append(alloc)
        previous = alloc.node
    return placed
