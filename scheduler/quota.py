"""Hierarchical elastic quota: guaranteed ``min``, ceiling ``max``, borrowing by weight, reclaim.

A tree of quotas (leaves hold jobs). Per resource (``cpu`` milli, ``memory`` MiB, ``rdma`` NICs,
GPUs per model as ``nvidia.com/gpu.<MODEL>``):

* **Runtime** (Koordinator's runtime quota): every quota's share of its parent's runtime, top
  down from the cluster capacity. A child first gets its guaranteed part, ``min(request, min)``
  (``min`` itself when it does not lend idle guarantee), then the idle rest is water-filled over
  the children that want more, in proportion to their weight, capped at what they request and at
  their ``max``; integer splits use the largest-remainder method so nothing is lost to rounding.
  ``request`` counts running and queued jobs, so runtime follows demand.
* **Admission**: a job fits when, on its leaf and every ancestor, ``used + job <= runtime`` and
  ``<= max``. It borrows when that exceeds ``min``.
* **Reclaim**: when a job does not fit, victims are taken from quotas outside the job's path that
  use more than their runtime (they borrow what others now ask back). Victims are whole jobs, so a
  gang is never cut below its min member; the lowest priority class that suffices is used, and in
  it the fewest jobs (exact search up to 16 candidates, greedy plus a redundancy pass above).

Guarantee: a quota whose demand stays within its ``min`` gets it back: its runtime is its whole
demand, every sibling subtree can be brought down to its own runtime, and runtimes of children
never sum above the parent's. The property tests check this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from itertools import combinations

from pydantic import BaseModel, ConfigDict, Field

from scheduler.model import MILLI, PodSpec

GPU_PREFIX = "nvidia.com/gpu."
ROOT = "<cluster>"


class QuotaError(ValueError):
    """Invalid quota tree: the message names the quota and the resource."""


class QuotaSpec(BaseModel):
    """One quota (ElasticQuota-shaped). Missing ``max`` entries mean no ceiling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    parent: str | None = None
    min: dict[str, int] = Field(default_factory=dict)
    max: dict[str, int] = Field(default_factory=dict)
    weight: dict[str, int] = Field(default_factory=dict, description="Borrowing weight; default max, else 1.")
    allow_lent: bool = True


@dataclass(frozen=True, slots=True)
class QuotaJob:
    """A job as quota sees it: totals over all members. Eviction is all members at once."""

    name: str
    quota: str
    request: Mapping[str, int]
    priority: int = 0
    members: int = 1
    min_member: int = 1


class Verdict(Enum):
    ADMIT = "admit"
    RECLAIM = "reclaim"  # admit after evicting ``victims``
    WAIT = "wait"  # fits the quota but not now, nothing to reclaim
    REJECT = "reject"  # can never fit (over a max)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    victims: tuple[str, ...] = ()
    reason: str = ""


def job_demand(pods: Iterable[PodSpec], gpu_model: str) -> dict[str, int]:
    """Quota resources of a job's pods, GPUs counted under ``nvidia.com/gpu.<model>``."""
    out: dict[str, int] = {}
    for pod in pods:
        for key, value in (
            ("cpu", pod.cpu_milli),
            ("memory", pod.memory_mib),
            ("rdma", pod.rdma_nics),
            (GPU_PREFIX + gpu_model, pod.num_gpu if not pod.shares_gpu else 0),
            (GPU_PREFIX + gpu_model + ".milli", pod.gpu_milli if pod.shares_gpu else 0),
        ):
            if value:
                out[key] = out.get(key, 0) + value
    if GPU_PREFIX + gpu_model + ".milli" in out:  # shares round up to whole GPUs of quota
        shares = out.pop(GPU_PREFIX + gpu_model + ".milli")
        out[GPU_PREFIX + gpu_model] = out.get(GPU_PREFIX + gpu_model, 0) + -(-shares // MILLI)
    return out


def water_fill(free: int, demands: list[int], weights: list[int]) -> list[int]:
    """Split ``free`` over demands in proportion to weights, capped per demand, nothing wasted.

    Rounds with the largest-remainder (Hamilton) method; repeats while someone is capped and
    capacity is left. A weight of 0 never receives anything.
    """
    given = [0] * len(demands)
    active = [i for i, (d, w) in enumerate(zip(demands, weights, strict=True)) if d > 0 and w > 0]
    while free > 0 and active:
        total_weight = sum(weights[i] for i in active)
        exact = [free * weights[i] for i in active]
        shares = [e // total_weight for e in exact]
        leftover = free - sum(shares)
        by_remainder = sorted(range(len(active)), key=lambda k: (-(exact[k] % total_weight), active[k]))
        for k in by_remainder[:leftover]:
            shares[k] += 1
        handed = 0
        still = []
        for k, i in enumerate(active):
            take = min(shares[k], demands[i] - given[i])
            given[i] += take
            handed += take
            if given[i] < demands[i]:
                still.append(i)
        free -= handed
        if handed == 0:
            break
        active = still
    return given


def _hamilton(total: int, weights: list[int]) -> list[int]:
    """Integers proportional to weights summing to ``total`` (used to scale mins down)."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        return [0] * len(weights)
    exact = [total * w for w in weights]
    out = [e // weight_sum for e in exact]
    for k in sorted(range(len(weights)), key=lambda k: (-(exact[k] % weight_sum), k))[: total - sum(out)]:
        out[k] += 1
    return out


@dataclass
class _Quota:
    spec: QuotaSpec
    parent: str
    children: list[str] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)


class QuotaTree:
    def __init__(self, specs: Iterable[QuotaSpec], capacity: Mapping[str, int]) -> None:
        self.capacity = dict(capacity)
        root = QuotaSpec(name=ROOT, min=dict(capacity), max=dict(capacity))
        self.quotas: dict[str, _Quota] = {ROOT: _Quota(root, "")}
        spec_list = list(specs)
        for spec in spec_list:
            if spec.name in self.quotas:
                raise QuotaError(f"quota {spec.name}: defined twice")
            self.quotas[spec.name] = _Quota(spec, spec.parent or ROOT)
        for name, quota in self.quotas.items():
            if name == ROOT:
                continue
            if quota.parent not in self.quotas:
                raise QuotaError(f"quota {name}: parent {quota.parent} does not exist")
            self.quotas[quota.parent].children.append(name)
        self._check_acyclic()
        self.resources = sorted(
            set(capacity) | {r for s in spec_list for r in (*s.min, *s.max)},
        )
        self._validate()
        self.running: dict[str, QuotaJob] = {}
        self.pending: dict[str, QuotaJob] = {}

    # -- validation --------------------------------------------------------------------------------
    def _check_acyclic(self) -> None:
        for name in self.quotas:
            seen = set()
            node = name
            while node != ROOT:
                if node in seen:
                    raise QuotaError(f"quota {name}: parent chain loops through {node}")
                seen.add(node)
                node = self.quotas[node].parent

    def _validate(self) -> None:
        for name, quota in self.quotas.items():
            spec = quota.spec
            for resource, low in spec.min.items():
                if low < 0:
                    raise QuotaError(f"quota {name}: min {resource} is negative ({low})")
                high = spec.max.get(resource)
                if high is not None and high < low:
                    raise QuotaError(f"quota {name}: min {resource} ({low}) is above its max ({high})")
            for resource in self.resources:
                total = sum(self.quotas[c].spec.min.get(resource, 0) for c in quota.children)
                own = spec.min.get(resource, 0) if name != ROOT else self.capacity.get(resource, 0)
                if total > own:
                    what = "the cluster capacity" if name == ROOT else f"its min ({own})"
                    raise QuotaError(
                        f"quota {name}: children's min for {resource} sum to {total}, above {what}"
                        f" (children: {', '.join(sorted(quota.children))})"
                    )

    # -- tree helpers ----------------------------------------------------------------------------
    def path(self, name: str) -> list[str]:
        """The quota and its ancestors up to the cluster root."""
        out = [name]
        while out[-1] != ROOT:
            out.append(self.quotas[out[-1]].parent)
        return out

    def is_leaf(self, name: str) -> bool:
        return not self.quotas[name].children

    def used(self, name: str, resource: str) -> int:
        return self.quotas[name].used.get(resource, 0)

    def max_of(self, name: str, resource: str) -> int | None:
        return self.quotas[name].spec.max.get(resource)

    # -- runtime ---------------------------------------------------------------------------------
    def runtime(self, extra: Iterable[QuotaJob] = ()) -> dict[str, dict[str, int]]:
        """Runtime quota of every quota for the current demand (running + queued + ``extra``)."""
        demand: dict[str, dict[str, int]] = {name: {} for name in self.quotas}
        for job in (*self.running.values(), *self.pending.values(), *extra):
            leaf = demand[job.quota]
            for resource, value in job.request.items():
                leaf[resource] = leaf.get(resource, 0) + value
        request: dict[str, dict[str, int]] = {}

        def aggregate(name: str) -> dict[str, int]:
            quota = self.quotas[name]
            own = dict(demand[name])
            for child in quota.children:
                spec = self.quotas[child].spec
                wanted = aggregate(child)
                for resource in self.resources:
                    value = wanted.get(resource, 0)
                    if not spec.allow_lent:  # a quota that does not lend keeps its min whatever it uses
                        value = max(value, spec.min.get(resource, 0))
                    limit = spec.max.get(resource)
                    if limit is not None:
                        value = min(value, limit)
                    if value:
                        own[resource] = own.get(resource, 0) + value
            request[name] = own
            return own

        aggregate(ROOT)
        runtime: dict[str, dict[str, int]] = {ROOT: dict(self.capacity)}
        order = [ROOT]
        for name in order:
            children = self.quotas[name].children
            order.extend(children)
            if children:
                for resource in self.resources:
                    self._split(name, children, resource, request, runtime)
        return runtime

    def _split(
        self,
        parent: str,
        children: list[str],
        resource: str,
        request: dict[str, dict[str, int]],
        runtime: dict[str, dict[str, int]],
    ) -> None:
        total = runtime[parent].get(resource, 0)
        wants, guaranteed, weights = [], [], []
        for child in children:
            spec = self.quotas[child].spec
            want = request[child].get(resource, 0)
            limit = spec.max.get(resource)
            if limit is not None:
                want = min(want, limit)
            low = spec.min.get(resource, 0)
            guaranteed.append(min(want, low) if spec.allow_lent else low)
            wants.append(want)
            weights.append(spec.weight.get(resource, limit if limit is not None else 1))
        if sum(guaranteed) > total:  # capacity shrank below the mins: scale them down
            guaranteed = _hamilton(total, guaranteed)
        free = total - sum(guaranteed)
        extra = water_fill(free, [max(w - g, 0) for w, g in zip(wants, guaranteed, strict=True)], weights)
        for child, base, more in zip(children, guaranteed, extra, strict=True):
            runtime.setdefault(child, {})[resource] = base + more

    # -- jobs ------------------------------------------------------------------------------------
    def submit(self, job: QuotaJob) -> None:
        if job.quota not in self.quotas or not self.is_leaf(job.quota):
            raise QuotaError(f"job {job.name}: quota {job.quota} is not a leaf quota")
        if job.name in self.running or job.name in self.pending:
            raise QuotaError(f"job {job.name}: already submitted")
        self.pending[job.name] = job

    def decide(self, name: str) -> Decision:
        """Can the queued job start now, after a reclaim, later, or never?"""
        job = self.pending[name]
        path = self.path(job.quota)
        for quota in path:
            for resource, value in job.request.items():
                limit = self.capacity.get(resource, 0) if quota == ROOT else self.max_of(quota, resource)
                if limit is not None and value > limit:
                    return Decision(
                        Verdict.REJECT, reason=f"{resource} {value} is above the max of quota {quota}"
                    )
        # runtime <= max everywhere, so the runtime deficits below also cover the max ceilings
        runtime = self.runtime()
        deficits = self._deficits(job, path, runtime)
        if not deficits:
            return Decision(Verdict.ADMIT)
        victims = self._choose_victims(job, path, runtime, deficits)
        if victims is None:
            quota, resource = next(iter(deficits))
            return Decision(Verdict.WAIT, reason=f"quota {quota} has no runtime left for {resource}")
        return Decision(Verdict.RECLAIM, victims)

    def start(self, name: str) -> None:
        job = self.pending.pop(name)
        self.running[name] = job
        self._account(job, +1)

    def finish(self, name: str) -> None:
        self._account(self.running.pop(name), -1)

    def evict(self, name: str) -> None:
        """Stop a running job and queue it again (its demand still counts)."""
        job = self.running.pop(name)
        self._account(job, -1)
        self.pending[name] = job

    def _account(self, job: QuotaJob, sign: int) -> None:
        for quota in self.path(job.quota):
            used = self.quotas[quota].used
            for resource, value in job.request.items():
                used[resource] = used.get(resource, 0) + sign * value

    # -- reclaim ---------------------------------------------------------------------------------
    def _deficits(
        self, job: QuotaJob, path: list[str], runtime: dict[str, dict[str, int]]
    ) -> dict[tuple[str, str], int]:
        out = {}
        for quota in path:
            for resource, value in job.request.items():
                short = self.used(quota, resource) + value - runtime[quota].get(resource, 0)
                if short > 0:
                    out[(quota, resource)] = short
        return out

    def _candidates(self, path: list[str], runtime: dict[str, dict[str, int]]) -> list[QuotaJob]:
        on_path = set(path)
        over: set[str] = set()
        for name, quota in self.quotas.items():
            if name not in on_path and any(
                value > runtime[name].get(resource, 0) for resource, value in quota.used.items()
            ):
                over.add(name)
        return [
            job
            for job in self.running.values()
            if any(q in over for q in self.path(job.quota)) and job.quota not in on_path
        ]

    def _choose_victims(
        self,
        job: QuotaJob,
        path: list[str],
        runtime: dict[str, dict[str, int]],
        deficits: dict[tuple[str, str], int],
    ) -> tuple[str, ...] | None:
        candidates = self._candidates(path, runtime)
        ancestors = {c.name: set(self.path(c.quota)) for c in candidates}

        def covers(chosen: Iterable[QuotaJob]) -> bool:
            freed: dict[tuple[str, str], int] = {}
            for victim in chosen:
                for key in deficits:
                    quota, resource = key
                    if quota in ancestors[victim.name]:
                        freed[key] = freed.get(key, 0) + victim.request.get(resource, 0)
            return all(freed.get(key, 0) >= short for key, short in deficits.items())

        for ceiling in sorted({c.priority for c in candidates}):
            pool = sorted(
                (c for c in candidates if c.priority <= ceiling),
                key=lambda c: (c.priority, -sum(c.request.values()), c.name),
            )
            if not covers(pool):
                continue
            return tuple(v.name for v in _fewest(pool, covers))
        return None


def _fewest(pool: list[QuotaJob], check: Callable[[Iterable[QuotaJob]], bool]) -> list[QuotaJob]:
    """Smallest covering subset: exact for small pools, greedy + redundancy pass otherwise."""
    if len(pool) <= 16:
        for size in range(1, len(pool) + 1):
            best: tuple[tuple[int, int], list[QuotaJob]] | None = None
            for subset in combinations(pool, size):
                if check(subset):
                    key = (sum(v.priority for v in subset), sum(sum(v.request.values()) for v in subset))
                    if best is None or key < best[0]:
                        best = (key, list(subset))
            if best is not None:
                return best[1]
    chosen: list[QuotaJob] = []
    for victim in pool:  # lowest priority, biggest first
        chosen.append(victim)
        if check(chosen):
            break
    for victim in reversed(list(chosen)):  # drop what is not needed (Kueue's reverse pass)
        trial = [v for v in chosen if v is not victim]
        if check(trial):
            chosen = trial
    return chosen
