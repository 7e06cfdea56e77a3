"""ElasticQuota objects -> the core's ``QuotaTree``, and admission of scheduling units through it.

Pure: built once per cycle from the cache's stores (quota objects, pods, the ledger), so the unit
tests feed literal JSON. The tree's logic (runtime water-filling, admission, victim choice) is
``scheduler/quota.py``; this module only translates.

* **Which quota governs a pod**: the pod's ``quota.scheduling.koordinator.sh/name`` label, else the
  (leaf) ElasticQuota of its namespace, as scheduler-plugins does (one per namespace). A pod with
  neither is not constrained by quota.
* **Tree**: quota names are cluster-wide (Koordinator); ``quota.scheduling.koordinator.sh/parent``
  names the parent, ``quota.scheduling.koordinator.sh/is-parent: "true"`` marks a parent (pods
  may not use it).
* **Broken parts**: the core rejects a whole tree on the first bad quota (children's min above the
  parent's min, min above max, a missing parent, a loop). Here the quota it names is cut out with
  its subtree, the error is kept for its status and events, and the tree is built from the rest:
  nothing is admitted against the broken part, everything else works.
* **Capacity** (the root): the allocatable of the nodes that quota-governed pods may use (their
  selectors, taints, affinity), minus what pods outside any quota hold there.
* **Used**: pods in the ledger (bound or assumed), grouped into jobs (a gang is one job, so a victim
  is always a whole gang). Pods being deleted (evicted) no longer count: they are already given
  back, so a reclaim is not repeated while they terminate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scheduler.live import objects
from scheduler.live.cache import PodState, SchedulerCache
from scheduler.quota import ROOT, QuotaError, QuotaJob, QuotaSpec, QuotaTree, Verdict

JSON = dict[str, Any]
ELASTIC_QUOTAS = "/apis/scheduling.x-k8s.io/v1alpha1/elasticquotas"
PARENT_LABEL = "quota.scheduling.koordinator.sh/parent"
IS_PARENT_LABEL = "quota.scheduling.koordinator.sh/is-parent"
QUOTA_NAME_LABEL = objects.QUOTA_NAME_LABEL
CPU, MEMORY = "cpu", "memory"
_QUOTA_PREFIX = re.compile(r"^quota ([^:]+): ")


@dataclass(frozen=True)
class QuotaObject:
    """One ElasticQuota as the tree needs it; amounts in the core's units (CPU milli, memory MiB)."""

    name: str
    namespace: str
    uid: str
    parent: str | None
    is_parent: bool
    min: dict[str, int]
    max: dict[str, int]
    problem: str | None = None


def resource_keys(gpu: str, rdma: tuple[str, ...]) -> tuple[str, ...]:
    """The quota resources: cpu, memory, the GPU resource and the (first) RDMA resource name."""
    return (CPU, MEMORY, gpu, rdma[0])


def _amounts(values: Mapping[str, Any] | None, gpu: str, rdma: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, text in (values or {}).items():
        if name == CPU:
            out[CPU] = objects.cpu_milli(text)
        elif name == MEMORY:
            out[MEMORY] = objects.memory_mib(text)
        elif name == gpu:
            out[gpu] = objects.count(text)
        elif name in rdma:
            out[rdma[0]] = out.get(rdma[0], 0) + objects.count(text)
        # other resources (pods, ephemeral-storage, ...) are not accounted by this scheduler
    return out


def parse(obj: Mapping[str, Any], gpu: str, rdma: tuple[str, ...]) -> QuotaObject:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    labels = meta.get("labels") or {}
    problem = None
    try:
        low, high = _amounts(spec.get("min"), gpu, rdma), _amounts(spec.get("max"), gpu, rdma)
    except ValueError as exc:
        low, high, problem = {}, {}, f"quota {meta['name']}: {exc}"
    return QuotaObject(meta["name"], meta.get("namespace", ""), meta.get("uid", ""),
                       labels.get(PARENT_LABEL) or None, labels.get(IS_PARENT_LABEL) == "true", low, high, problem)


def render(amounts: Mapping[str, int]) -> dict[str, str]:
    """Core units back to a Kubernetes ResourceList."""
    out = {}
    for name, value in sorted(amounts.items()):
        if name == CPU:
            out[name] = f"{value // 1000}" if value % 1000 == 0 else f"{value}m"
        elif name == MEMORY:
            out[name] = f"{value}Mi"
        else:
            out[name] = str(value)
    return out


def pod_request(pod: PodState, gpu: str, rdma: tuple[str, ...]) -> dict[str, int]:
    res = pod.res
    pairs = ((CPU, res.cpu_milli), (MEMORY, res.memory_mib), (gpu, res.gpus), (rdma[0], res.rdma))
    return {k: v for k, v in pairs if v}


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


class CycleTree(QuotaTree):
    """The core's tree, with ``runtime()`` computed once per demand.

    Runtime follows demand (running + queued jobs), which ``start`` does not change (a job moves from
    queued to running): within one cycle every ``decide`` would otherwise recompute the same runtime,
    O(jobs) each (5 s for 2,000 pending pods, measured). Submitting, finishing or evicting a job resets it."""

    _memo: dict[str, dict[str, int]] | None = None

    def runtime(self, extra: Iterable[QuotaJob] = ()) -> dict[str, dict[str, int]]:
        extra = tuple(extra)
        if extra:
            return super().runtime(extra)
        if self._memo is None:
            self._memo = super().runtime()
        return self._memo

    def submit(self, job: QuotaJob) -> None:
        self._memo = None
        super().submit(job)

    def finish(self, name: str) -> None:
        self._memo = None
        super().finish(name)

    def evict(self, name: str) -> None:
        self._memo = None
        super().evict(name)


@dataclass
class Admission:
    verdict: Verdict
    quota: str | None = None
    victims: tuple[str, ...] = ()  # job keys (gang or pod keys) to evict, whole
    message: str = ""


@dataclass
class QuotaBook:
    """The quota state of one cycle: the tree with running and pending jobs, and the broken parts."""

    known: dict[str, QuotaObject]  # every quota object by name
    broken: dict[str, str]  # quota -> why nothing is admitted against it
    tree: QuotaTree | None
    job_pods: dict[str, list[str]] = field(default_factory=dict)  # running job -> its pod keys
    gpu: str = objects.GPU_RESOURCE
    rdma: tuple[str, ...] = objects.RDMA_RESOURCES
    by_namespace: dict[str, str] = field(default_factory=dict)
    # (quota, request) -> a WAIT found this cycle. Within a cycle WAIT stays WAIT: runtime is fixed and
    # only admitted jobs start (within their runtime), so usage grows and no new borrower appears.
    _waits: dict[tuple[str, tuple[tuple[str, int], ...]], Admission] = field(default_factory=dict)

    def quota_of(self, pod: PodState) -> str | None:
        return pod.quota_label or self.by_namespace.get(pod.namespace)

    def pending_name(self, unit_key: str) -> str:
        return f"{unit_key}#pending"

    def admit(self, unit_key: str, pods: list[PodState]) -> Admission:
        """May this unit be placed now, after evicting victims, later, or never?"""
        quota = self.quota_of(pods[0])
        if quota is None:
            return Admission(Verdict.ADMIT)
        if quota not in self.known:
            return Admission(Verdict.WAIT, quota, message=f"quota {quota} does not exist")
        if quota in self.broken:
            return Admission(Verdict.WAIT, quota, message=f"quota {quota} is invalid: {self.broken[quota]}")
        if self.known[quota].is_parent or (self.tree and not self.tree.is_leaf(quota)):
            return Admission(Verdict.REJECT, quota, message=f"quota {quota} is a parent quota; pods use leaf quotas")
        assert self.tree is not None
        name = self.pending_name(unit_key)
        shape = (quota, tuple(sorted(self.tree.pending[name].request.items())))
        if shape in self._waits:
            return self._waits[shape]
        decision = self.tree.decide(name)
        if decision.verdict is Verdict.ADMIT:
            return Admission(Verdict.ADMIT, quota)
        if decision.verdict is Verdict.RECLAIM:
            return Admission(Verdict.RECLAIM, quota, decision.victims,
                             f"quota {quota}: reclaiming from borrowers, evicting {', '.join(decision.victims)}")
        if decision.verdict is Verdict.REJECT:
            return Admission(Verdict.REJECT, quota, message=f"quota: {decision.reason}")
        waiting = self._waits[shape] = Admission(Verdict.WAIT, quota, message=self._wait_reason(name))
        return waiting

    def _wait_reason(self, name: str) -> str:
        """'quota team-a at max nvidia.com/gpu 16 (used 16, asks 1)' or the runtime share that blocks."""
        assert self.tree is not None
        tree = self.tree
        job = tree.pending[name]
        runtime = tree.runtime()
        for quota in tree.path(job.quota):
            for resource, value in sorted(job.request.items()):
                used = tree.used(quota, resource)
                limit = tree.max_of(quota, resource) if quota != ROOT else tree.capacity.get(resource, 0)
                if limit is not None and used + value > limit:
                    if quota == ROOT:
                        return (f"cluster capacity for quota-governed pods at {resource} {limit}"
                                f" (used {used}, asks {value})")
                    return f"quota {quota} at max {resource} {limit} (used {used}, asks {value})"
        for quota in tree.path(job.quota):
            for resource, value in sorted(job.request.items()):
                used, share = tree.used(quota, resource), runtime[quota].get(resource, 0)
                if used + value > share:
                    spec = self.known.get(quota)
                    low = spec.min.get(resource, 0) if spec else share
                    return (f"quota {quota} at its share of {resource} {share} now (min {low}, used {used},"
                            f" asks {value}); nothing borrowed can be reclaimed for it")
        return "quota: waiting"

    def start(self, unit_key: str) -> None:
        """The unit was placed: it now uses its quota (for the rest of this cycle)."""
        if self.tree is not None and self.pending_name(unit_key) in self.tree.pending:
            self.tree.start(self.pending_name(unit_key))

    def used(self, quota: str) -> dict[str, int]:
        if self.tree is None or quota not in self.tree.quotas:
            return {}
        return {r: v for r, v in self.tree.quotas[quota].used.items() if v}

    def runtime(self) -> dict[str, dict[str, int]]:
        return self.tree.runtime() if self.tree is not None else {}


def _subtree(objs: Mapping[str, QuotaObject], root: str) -> set[str]:
    out = {root}
    grew = True
    while grew:
        grew = False
        for obj in objs.values():
            if obj.parent in out and obj.name not in out:
                out.add(obj.name)
                grew = True
    return out


def build_tree(objs: Mapping[str, QuotaObject], capacity: Mapping[str, int],
               resources: Iterable[str]) -> tuple[QuotaTree | None, dict[str, str]]:
    """The core's tree over the valid quotas, and why each invalid one (with its subtree) was cut out."""
    broken: dict[str, str] = {}
    for obj in objs.values():
        if obj.problem:
            broken.update({n: obj.problem for n in _subtree(objs, obj.name)})
    keep = set(resources)
    while True:
        valid = [o for o in objs.values() if o.name not in broken]
        specs = [QuotaSpec(name=o.name, parent=o.parent, min={k: v for k, v in o.min.items() if k in keep},
                           max={k: v for k, v in o.max.items() if k in keep}) for o in valid]
        # The root's children may ask for more min than the nodes have now (nodes come and go): the
        # core scales the mins down at runtime, so validate against at least their sum.
        top = {k: capacity.get(k, 0) for k in keep}
        for key in keep:
            top[key] = max(top[key], sum(s.min.get(key, 0) for s in specs if s.parent is None))
        try:
            tree = CycleTree(specs, top)
        except QuotaError as exc:
            match = _QUOTA_PREFIX.match(str(exc))
            name = match.group(1) if match else None
            if name is None or name not in objs or name in broken:  # cannot attribute it: all is broken
                return None, {n: str(exc) for n in objs}
            broken.update({n: str(exc) if n == name else f"parent quota {name} is invalid"
                           for n in _subtree(objs, name)})
            continue
        tree.capacity = {k: capacity.get(k, 0) for k in tree.capacity}
        tree._memo = None
        return tree, broken


def parse_all(raw: Iterable[Mapping[str, Any]], gpu: str, rdma: tuple[str, ...]) -> dict[str, QuotaObject]:
    """Every ElasticQuota by name; a name defined in two namespaces is a problem of that quota."""
    objs: dict[str, QuotaObject] = {}
    duplicates: dict[str, str] = {}
    for item in raw:
        obj = parse(item, gpu, rdma)
        if obj.name in objs:
            duplicates[obj.name] = (f"quota {obj.name}: defined in namespaces {objs[obj.name].namespace} and"
                                    f" {obj.namespace}; quota names are cluster-wide")
        objs[obj.name] = obj
    for name, why in duplicates.items():
        objs[name] = replace(objs[name], problem=why)
    return objs


def leaf_by_namespace(objs: Mapping[str, QuotaObject]) -> dict[str, str]:
    """The quota that governs a namespace's pods without a quota label: its leaf quota (first by name)."""
    out: dict[str, str] = {}
    for obj in sorted(objs.values(), key=lambda o: o.name):
        if not obj.is_parent and not any(o.parent == obj.name for o in objs.values()):
            out.setdefault(obj.namespace, obj.name)
    return out


def build(cache: SchedulerCache, pending: Iterable[tuple[str, list[PodState]]]) -> QuotaBook:
    """The cycle's book from the cache (quotas, pods, the ledger) and the pending units (key, pods)."""
    gpu, rdma = cache.gpu, cache.rdma
    pending = list(pending)
    objs = parse_all(cache.quotas.values(), gpu, rdma)
    book = QuotaBook(objs, {}, None, gpu=gpu, rdma=rdma, by_namespace=leaf_by_namespace(objs))
    holding = cache.cluster.allocations
    governed = [cache.pods[k] for k in holding if k in cache.pods and book.quota_of(cache.pods[k])]
    governed += [p for _, members in pending for p in members if book.quota_of(p)]
    total = capacity(cache, governed, lambda p: book.quota_of(p) is not None, gpu, rdma[0])
    tree, broken = build_tree(objs, total, resource_keys(gpu, rdma))
    book.tree, book.broken = tree, broken
    if tree is None:
        return book
    pods = cache.pods
    jobs: dict[str, QuotaJob] = {}
    for key in holding:
        pod = pods.get(key)
        if pod is None or pod.deleting:
            continue
        quota = book.quota_of(pod)
        if quota is None or quota in broken or quota not in tree.quotas or not tree.is_leaf(quota):
            continue
        job_key = pod.gang.key if pod.gang else pod.key
        job = jobs.get(job_key)
        request = pod_request(pod, gpu, rdma)
        if job is None:
            jobs[job_key] = QuotaJob(job_key, quota, request, pod.priority)
        else:
            total = dict(job.request)
            _add(total, request)
            jobs[job_key] = QuotaJob(job_key, job.quota, total, max(job.priority, pod.priority), job.members + 1)
        book.job_pods.setdefault(job_key, []).append(key)
    for job in jobs.values():
        tree.submit(job)
        tree.start(job.name)
    for unit_key, members in pending:
        quota = book.quota_of(members[0])
        if quota is None or quota in broken or quota not in tree.quotas or not tree.is_leaf(quota):
            continue
        demand: dict[str, int] = {}
        for member in members:
            _add(demand, pod_request(member, gpu, rdma))
        tree.submit(QuotaJob(book.pending_name(unit_key), quota, demand, max(p.priority for p in members),
                             len(members)))
    return book


def capacity(cache: SchedulerCache, governed: Iterable[PodState], is_governed: Callable[[PodState], bool],
             gpu: str, rdma_key: str) -> dict[str, int]:
    """The root of the tree: nodes that quota-governed pods may use, less what ungoverned pods hold there."""
    cluster = cache.cluster
    allowed: set[int] = set()
    seen: set[tuple[str, str, str]] = set()
    for pod in governed:
        if pod.constraints.signature in seen:
            continue
        seen.add(pod.constraints.signature)
        excluded = set(cache.excluded(pod.constraints)[0])
        allowed.update(n.index for n in cluster.nodes if n.index not in excluded)
    total = {CPU: 0, MEMORY: 0, gpu: 0, rdma_key: 0}
    for index in allowed:
        node = cluster.nodes[index]
        total[CPU] += node.cpu_milli
        total[MEMORY] += node.memory_mib
        total[gpu] += node.gpu_count
        total[rdma_key] += node.nic_count
    for key, alloc in cluster.allocations.items():
        holder = cache.pods.get(key)
        if alloc.node in allowed and (holder is None or not is_governed(holder)):
            total[CPU] -= alloc.cpu_milli
            total[MEMORY] -= alloc.memory_mib
            total[gpu] -= len(alloc.gpus)
            total[rdma_key] -= len(alloc.nics)
    return {k: max(v, 0) for k, v in total.items()}
