"""Queue admission (`railnet controller --admission quota`): jobs wait, suspended, until their
ElasticQuota admits them, then run in priority, then FIFO, order.

Which jobs: those whose pods an ElasticQuota (scheduling.x-k8s.io/v1alpha1) governs, by the rule
railnet's scheduler uses (``scheduler/live/quotas.py``): the quota named by the pods' label
``quota.scheduling.koordinator.sh/name``, else the leaf quota of the job's namespace. Other jobs run
at once, as without admission.

What a job asks: the sum over its replicas of each pod's requests, in the scheduler's units and
resources (cpu, memory, the GPU and RDMA resources; ``quotas.pod_request``). Admitted jobs that are
neither finished nor suspended hold their whole request, whether or not their pods run yet (Kueue's
quota reservation).

The decision is the scheduler's own quota tree (``scheduler/quota.py`` through ``quotas.QuotaBook``):
capacity = allocatable of the schedulable nodes; each quota's runtime share follows demand (admitted
plus queued jobs), so a quota borrows idle ``min`` of others up to its ``max``. A queued job is
admitted when it fits its runtime share and every max on its path (``ADMIT``), or when it fits its
share only after what others borrow is taken back (``RECLAIM``: admitted; railnet's scheduler
reclaims through the Eviction API when the pods arrive). ``WAIT``: stays queued. ``REJECT`` (above a
max or the cluster on its own): stays queued with an ``Inadmissible`` event, and does not block others.

Order: per quota, queued jobs by priority (the PriorityClass named by ``schedulingPolicy.priorityClass``,
else the highest ``priorityClassName`` of its templates), then creation time, then name; strict
within a quota: a job that waits blocks the ones after it (no large job starves behind small ones),
quotas do not block each other (Kueue's StrictFIFO per ClusterQueue).

States, on the job annotation ``railnet.io/admission`` (the controller owns ``suspend`` of a job in
``Queued``):

* none, not suspended, not started → ``Queued``: one merge patch sets ``suspend`` (``runPolicy.suspend``
  for kubeflow.org, ``spec.suspend`` for KubeDL's group) and the annotation; condition ``Queuing``
  (reason ``JobEnqueued``, KubeDL's) says what it waits for;
* ``Queued`` and admitted → ``Admitted``: one patch clears ``suspend``; ``Queuing`` turns False
  (reason ``JobAdmitted``) and the job runs;
* ``Admitted`` and suspended by the user → the annotation goes: a user-suspended job stays suspended
  (as does one created suspended); resuming it queues it again;
* a job already running when admission was turned on (it has ``status.startTime``) is ``Admitted``
  as it is, never suspended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jobs import api, ports, status
from scheduler.live import objects, quotas
from scheduler.live.cache import PodState
from scheduler.quota import QuotaJob, Verdict

JSON = dict[str, Any]
STATE = "railnet.io/admission"  # on a job: "Queued" or "Admitted" (written by the controller)
QUEUED, ADMITTED = "Queued", "Admitted"
PRIORITY_CLASSES = "/apis/scheduling.k8s.io/v1/priorityclasses"
LEDGER_TTL = 60.0  # seconds an admission counts before the cache shows it
RECHECK_S = 10.0  # a queued job is looked at again at least this often
_ANY_RANGE = ports.PortRange(1, 65535)


@dataclass(frozen=True)
class Entry:
    """A job as admission sees it."""

    key: str
    quota: str | None  # what governs it now (the plan looks it up again from ``pod``)
    request: Mapping[str, int]
    priority: int
    created: str
    pod: PodState  # a replica pod, for the quota lookup


@dataclass(frozen=True)
class Outcome:
    admit: bool
    message: str
    never: bool = False  # REJECT: above a max on its own


def state_of(obj: JSON) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(STATE)


def suspend_patch(group: str, value: bool) -> JSON:
    return {"spec": {"runPolicy": {"suspend": value}}} if group == api.KUBEFLOW else {"spec": {"suspend": value}}


def order(entry: Entry) -> tuple[int, str, str]:
    return (-entry.priority, entry.created, entry.key)


def plan(objs: Mapping[str, quotas.QuotaObject], capacity: Mapping[str, int], admitted: Iterable[Entry],
         queued: Iterable[Entry], gpu: str, rdma: tuple[str, ...]) -> dict[str, Outcome]:
    """Which queued jobs the quotas admit now (pure): the admitted ones hold their requests; the queued
    ones are tried per quota in ``order``, strictly (a waiting job blocks later ones of its quota)."""
    tree, broken = quotas.build_tree(objs, capacity, quotas.resource_keys(gpu, rdma))
    book = quotas.QuotaBook(dict(objs), broken, tree, gpu=gpu, rdma=rdma, by_namespace=quotas.leaf_by_namespace(objs))
    queued = sorted(queued, key=order)
    if tree is not None:
        for entry in admitted:
            name = book.quota_of(entry.pod)
            if name is not None and _valid_leaf(book, name):
                tree.submit(QuotaJob(entry.key, name, dict(entry.request), entry.priority))
                tree.start(entry.key)
        for entry in queued:
            name = book.quota_of(entry.pod)
            if name is not None and _valid_leaf(book, name):
                tree.submit(QuotaJob(book.pending_name(entry.key), name, dict(entry.request), entry.priority))
    out: dict[str, Outcome] = {}
    blocked: dict[str, str] = {}  # quota -> the job at the head of its queue that waits
    for entry in queued:
        name = book.quota_of(entry.pod)
        if name is None:
            out[entry.key] = Outcome(True, "no quota governs it")
            continue
        if name in blocked:
            out[entry.key] = Outcome(False, f"queued behind {blocked[name]} in quota {name}")
            continue
        verdict = book.admit(entry.key, [entry.pod])
        if verdict.verdict in (Verdict.ADMIT, Verdict.RECLAIM):
            book.start(entry.key)
            how = "" if verdict.verdict is Verdict.ADMIT else " (the scheduler reclaims what others borrow of it)"
            out[entry.key] = Outcome(True, f"admitted by quota {name}{how}")
        elif verdict.verdict is Verdict.REJECT:
            out[entry.key] = Outcome(False, f"{verdict.message}: it can never be admitted; lower its requests "
                                     "or raise the quota", never=True)
        else:
            out[entry.key] = Outcome(False, f"waiting for {verdict.message}")
            blocked[name] = entry.key.split("/")[-1]
    return out


def _valid_leaf(book: quotas.QuotaBook, quota: str) -> bool:
    tree = book.tree
    return tree is not None and quota in tree.quotas and quota not in book.broken and tree.is_leaf(quota)


class Admission:
    """The caches admission decides from (ElasticQuotas, nodes, PriorityClasses) and the decision,
    under one lock, with a ledger of admissions the job cache does not show yet."""

    def __init__(self, jobs: Callable[[], Iterable[JSON]], kick: Callable[[str], None],
                 gpu: str = objects.GPU_RESOURCE, rdma: tuple[str, ...] = objects.RDMA_RESOURCES) -> None:
        self.jobs, self.kick, self.gpu, self.rdma = jobs, kick, gpu, rdma
        self.lock = threading.Lock()
        self.quotas: dict[str, JSON] = {}  # ns/name -> ElasticQuota
        self.nodes: dict[str, dict[str, int]] = {}  # node -> allocatable (core units)
        self.priorities: dict[str, int] = {}  # PriorityClass -> value
        self.default_priority = 0
        self.ledger: dict[str, float] = {}  # job key -> monotonic time it was admitted here
        self._seen: dict[tuple[str, str], _Seen] = {}  # (uid, resourceVersion) -> what decide needs of a job
        self._objs: tuple[int, dict[str, quotas.QuotaObject], dict[str, str]] | None = None  # per version
        self._version = 0  # bumped when quotas, nodes or priorities change
        self._memo: tuple[Any, dict[str, Outcome]] | None = None  # the last plan, for the same inputs

    # -- caches (reflector threads) ----------------------------------------------------------------------
    def replace_quotas(self, items: list[JSON]) -> None:
        with self.lock:
            self.quotas = {_ns_name(i): i for i in items}
            self._version += 1
            self._seen.clear()  # which quota governs a job may have changed
        self.kick_all()

    def on_quota(self, event: str, obj: JSON) -> None:
        with self.lock:
            self.quotas.pop(_ns_name(obj), None)
            if event != "DELETED":
                self.quotas[_ns_name(obj)] = obj
            self._version += 1
            self._seen.clear()
        self.kick_all()

    def replace_nodes(self, items: list[JSON]) -> None:
        with self.lock:
            self.nodes = {}
            self._version += 1
        for item in items:
            self.on_node("ADDED", item)

    def on_node(self, event: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            before = self.nodes.pop(name, None)
            if event != "DELETED" and not (obj.get("spec") or {}).get("unschedulable"):
                res = objects.node_resources(obj, self.gpu, self.rdma)
                self.nodes[name] = {quotas.CPU: res.cpu_milli, quotas.MEMORY: res.memory_mib, self.gpu: res.gpus,
                                    self.rdma[0]: res.rdma}
            if self.nodes.get(name) != before:  # heartbeats change nothing here
                self._version += 1

    def replace_priorities(self, items: list[JSON]) -> None:
        with self.lock:
            self.priorities, self.default_priority = {}, 0
        for item in items:
            self.on_priority("ADDED", item)

    def on_priority(self, event: str, obj: JSON) -> None:
        with self.lock:
            name = obj["metadata"]["name"]
            self.priorities.pop(name, None)
            if event != "DELETED":
                self.priorities[name] = int(obj.get("value") or 0)
                if obj.get("globalDefault"):
                    self.default_priority = self.priorities[name]
            self._seen.clear()
            self._version += 1

    def kick_all(self) -> None:
        for obj in list(self.jobs()):
            if state_of(obj) == QUEUED:
                self.kick(_job_key(obj))

    # -- decisions ---------------------------------------------------------------------------------------
    def governed(self, job: api.Job) -> bool:
        entry = self.entry_of(job)
        return entry is not None and entry.quota is not None

    def entry_of(self, job: api.Job) -> Entry | None:
        with self.lock:
            objs = quotas.parse_all(self.quotas.values(), self.gpu, self.rdma)
            return self._entry(job, quotas.leaf_by_namespace(objs))

    def decide(self, key: str) -> Outcome:
        """Whether the queued job ``key`` is admitted now (recorded in the ledger when it is)."""
        with self.lock:
            now = time.monotonic()
            if self._objs is None or self._objs[0] != self._version:
                parsed = quotas.parse_all(self.quotas.values(), self.gpu, self.rdma)
                self._objs = (self._version, parsed, quotas.leaf_by_namespace(parsed))
            _, objs, leaves = self._objs
            admitted: list[Entry] = []
            queued: list[Entry] = []
            ledger = self.ledger
            for obj in list(self.jobs()):
                seen = self._seen_of(obj, leaves)
                if seen.entry is None:
                    continue
                in_ledger = seen.key in ledger and now - ledger[seen.key] < LEDGER_TTL
                if seen.state == ADMITTED and in_ledger:
                    del ledger[seen.key]  # the cache shows it now
                if seen.terminal:
                    continue
                if seen.state == ADMITTED and not seen.suspended or in_ledger:
                    admitted.append(seen.entry)
                elif seen.state == QUEUED:
                    queued.append(seen.entry)
            # the same inputs give the same plan: every queued job looked at after one change costs one plan
            memo_key = (self._version, frozenset(map(id, admitted)), frozenset(map(id, queued)))
            if self._memo is not None and self._memo[0] == memo_key:
                planned = self._memo[1]
            else:
                capacity: dict[str, int] = {}
                for alloc in self.nodes.values():
                    for resource, value in alloc.items():
                        capacity[resource] = capacity.get(resource, 0) + value
                planned = plan(objs, capacity, admitted, queued, self.gpu, self.rdma)
                self._memo = (memo_key, planned)
            outcome = planned.get(key, Outcome(False, "not queued"))
            if outcome.admit:
                self.ledger[key] = now
                mine = next((e for e in queued if e.key == key), None)
                if mine is not None:  # the plan already counted it as admitted: still valid for the others
                    self._memo = ((self._version, memo_key[1] | {id(mine)}, memo_key[2] - {id(mine)}), planned)
            return outcome

    def forget(self, key: str) -> None:
        """An admission that was not written after all."""
        with self.lock:
            self.ledger.pop(key, None)

    def _entry(self, job: api.Job, leaves: Mapping[str, str]) -> Entry:
        request: dict[str, int] = {}
        first: PodState | None = None
        best: int | None = None
        for r in job.replicas.values():
            template = r.template
            meta = template.get("metadata") or {}
            pod = PodState.of({"metadata": {"namespace": job.namespace, "name": job.pod_name(r.rtype, 0),
                                            "labels": meta.get("labels") or {}},
                               "spec": template.get("spec") or {}}, "", self.gpu, self.rdma)
            first = first or pod
            for resource, value in quotas.pod_request(pod, self.gpu, self.rdma).items():
                request[resource] = request.get(resource, 0) + value * r.replicas
            name = (template.get("spec") or {}).get("priorityClassName")
            if name in self.priorities:
                best = max(best if best is not None else self.priorities[name], self.priorities[name])
        sched = job.scheduling_policy
        named = sched.get("priorityClass") or sched.get("priorityClassName")
        priority = self.priorities.get(named, self.default_priority) if named else (
            best if best is not None else self.default_priority)
        assert first is not None
        quota = first.quota_label or leaves.get(job.namespace)
        return Entry(job.key, quota, request, priority, job.created, first)

    def _seen_of(self, obj: JSON, leaves: Mapping[str, str]) -> _Seen:
        meta = obj["metadata"]
        cache_key = (meta.get("uid", ""), meta.get("resourceVersion", ""))
        found = self._seen.get(cache_key)
        if found is not None:
            return found
        try:
            job = api.parse(obj, _ANY_RANGE, False)
        except api.JobSpecError:
            entry = None  # an invalid job never runs: it holds nothing and waits for nothing
        else:
            entry = self._entry(job, leaves)
        if len(self._seen) > 10000:
            self._seen.clear()
            self._version += 1  # entries' identities are part of the memo key
        found = self._seen[cache_key] = _Seen(entry, _job_key(obj), state_of(obj),
                                              status.terminal(obj.get("status") or {}) is not None, _suspended(obj))
        return found


@dataclass(frozen=True)
class _Seen:
    """What ``decide`` needs of one version of a job object."""

    entry: Entry | None
    key: str
    state: str | None
    terminal: bool
    suspended: bool


def _suspended(obj: JSON) -> bool:
    spec = obj.get("spec") or {}
    group = obj["apiVersion"].split("/")[0]
    run = spec if group == api.KUBEDL else (spec.get("runPolicy") or {})
    return bool(run.get("suspend", spec.get("suspend", False)))


def _ns_name(obj: JSON) -> str:
    return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def _job_key(obj: JSON) -> str:
    group = obj["apiVersion"].split("/")[0]
    return api.job_key(group, obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
