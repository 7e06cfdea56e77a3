"""The scheduler cache: watched nodes, NodeTopologies, pods and PodGroups -> the core's ``Cluster``.

Every pod that holds resources is in the cluster's ledger (``Cluster.allocations``, keyed by
"namespace/name"): pods railnet bound keep the devices their ``railnet.io/allocation`` annotation
names; pods bound by anyone else (kube-scheduler, static pods) take the right number of devices,
the highest free indices, since nothing says which ones. A decision is *assumed* (applied to the
ledger) before its bind is sent, so the next decision already sees it; a failed bind is
``forget``-ed. Node changes that alter what the core sees (allocatable, labels, taints, topology)
mark the cluster dirty and it is rebuilt from the stores before the next cycle; kwok's and
kubelet's status heartbeats do not.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType, SimpleNamespace
from typing import Any

from scheduler.domains import DEFAULT_DOMAIN_KEYS
from scheduler.dra.api import pod_claims
from scheduler.live import hostports, interpod, objects
from scheduler.live.allocation import PodAllocation
from scheduler.live.claims import DraState
from scheduler.model import MILLI, Allocation, Cluster, ModelError, Node, PodSpec, new_node
from scheduler.topology import CompactTopology, bits, from_node_topology, uniform

JSON = dict[str, Any]
log = logging.getLogger("railnet.scheduler.cache")
DRA_HOLD = "[dra]/"  # ledger key prefix of what claims hold on a node outside any pod ('[' is in no pod key)
_NO_LABELS: Mapping[str, str] = MappingProxyType({})


@dataclass
class PodState:
    """What the scheduler keeps of one pod."""

    key: str
    namespace: str
    name: str
    uid: str
    rv: int
    node: str | None
    ours: bool  # spec.schedulerName is ours
    res: objects.Resources
    spec: PodSpec
    constraints: objects.Constraints
    gang: objects.GangRef | None
    annotation: str | None
    created: str
    priority: int
    quota_label: str | None = None  # quota.scheduling.koordinator.sh/name
    deleting: bool = False  # metadata.deletionTimestamp is set (e.g. evicted)
    phase: str = ""  # status.phase
    labels: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)  # metadata.labels (inter-pod affinity matches them)
    terms: interpod.PodAffinity | None = None  # required podAffinity / podAntiAffinity
    claims: tuple[tuple[str, str | None], ...] = ()  # spec.resourceClaims: (name, ResourceClaim or None yet)

    @classmethod
    def of(cls, obj: Mapping[str, Any], scheduler_name: str, gpu: str, rdma: Sequence[str]) -> PodState:
        meta, spec = obj["metadata"], obj.get("spec", {})
        key = objects.pod_key(obj)
        res = objects.pod_resources(obj, gpu, rdma)
        return cls(
            key=key, namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""),
            rv=_rv(meta), node=spec.get("nodeName") or None,
            ours=spec.get("schedulerName") == scheduler_name, res=res, spec=objects.pod_spec(key, res),
            constraints=objects.constraints_of(obj), gang=objects.gang_of(obj),
            annotation=(meta.get("annotations") or {}).get(objects.ALLOCATION_ANNOTATION),
            created=meta.get("creationTimestamp", ""), priority=int(spec.get("priority") or 0),
            quota_label=(meta.get("labels") or {}).get(objects.QUOTA_NAME_LABEL) or None,
            deleting=bool(meta.get("deletionTimestamp")), phase=_phase(obj),
            labels=meta.get("labels") or _NO_LABELS, terms=interpod.affinity_of(obj),
            claims=pod_claims(obj),
        )


def _phase(obj: Mapping[str, Any]) -> str:
    return sys.intern(str((obj.get("status") or {}).get("phase") or ""))  # one copy per phase, not per pod


def _rv(meta: Mapping[str, Any]) -> int:
    try:
        return int(meta.get("resourceVersion") or 0)
    except ValueError:  # opaque on non-etcd storage: never treat an event as stale
        return 1 << 62


class SchedulerCache:
    def __init__(self, scheduler_name: str = "railnet", gpu_resource: str = objects.GPU_RESOURCE,
                 rdma_resources: Sequence[str] = objects.RDMA_RESOURCES,
                 domain_keys: tuple[str, ...] = DEFAULT_DOMAIN_KEYS) -> None:
        self.scheduler_name, self.gpu, self.rdma, self.domain_keys = (
            scheduler_name, gpu_resource, tuple(rdma_resources), domain_keys)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.generation = 0  # bumped on every change the loop may care about
        self.freed = 0  # bumped whenever resources are released (unschedulable pods may fit now)
        self.nodes: dict[str, JSON] = {}
        self._node_sig: dict[str, str] = {}
        self.topologies: dict[str, JSON] = {}
        self.pods: dict[str, PodState] = {}
        self.waiting: set[str] = set()  # our pods without a node (assumed ones included)
        self.podgroups: dict[str, JSON] = {}
        self.quotas: dict[str, JSON] = {}  # ElasticQuotas by "namespace/name"
        self.namespaces: dict[str, Mapping[str, str]] = {}  # namespace -> labels (namespaceSelector)
        self.with_terms: set[str] = set()  # pods with required inter-pod (anti-)affinity
        self.with_ports: set[str] = set()  # pods that declare host ports (hostports.py)
        self.cluster = Cluster([], domain_keys)
        self.dirty = True
        self.assumed: dict[str, tuple[str, Allocation]] = {}  # pod -> (node name, allocation)
        self.bound_at: dict[str, float] = {}  # assumed pod -> monotonic time its bind succeeded
        self.gang_members: dict[str, set[str]] = {}  # gang key -> keys of its (non-terminal) pods
        self.gang_finished: dict[str, dict[str, str]] = {}  # gang key -> {pod uid: Succeeded|Failed}
        self.foreign: set[str] = set()  # ledger entries whose devices are a guess
        self.backoff: dict[str, float] = {}  # pod -> monotonic time before which it is not retried
        self._excluded: dict[tuple[str, str, str], tuple[list[int], dict[str, int]]] = {}
        self.dra = DraState()
        self._listeners: tuple[Cluster | None, dict[int, frozenset[int]]] = (None, {})

    # -- events (reflector threads) ------------------------------------------------------------------
    def _bump(self, freed: bool = False) -> None:
        self.generation += 1
        self.freed += freed
        self.changed.notify_all()

    def replace_nodes(self, items: list[JSON]) -> None:
        with self.lock:
            for name in set(self.nodes) - {n["metadata"]["name"] for n in items}:
                self.on_node("DELETED", {"metadata": {"name": name}})
            for item in items:
                self.on_node("ADDED", item)

    def on_node(self, kind: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            if kind == "DELETED":
                if self.nodes.pop(name, None) is not None:
                    self._node_sig.pop(name, None)
                    self.dirty = True
                    self._bump()
                return
            trimmed = {
                "metadata": {"name": name, "labels": obj["metadata"].get("labels") or {},
                             "annotations": {k: v for k, v in (obj["metadata"].get("annotations") or {}).items()
                                             if k == hostports.HOST_LISTENERS}},
                "spec": {k: v for k, v in (obj.get("spec") or {}).items() if k in ("taints", "unschedulable")},
                "status": {"allocatable": (obj.get("status") or {}).get("allocatable") or {}},
            }
            sig = json.dumps(trimmed, sort_keys=True)
            if self._node_sig.get(name) != sig:
                self._node_sig[name] = sig
                self.nodes[name] = trimmed
                self.dirty = True
                self._bump(freed=True)

    def replace_topologies(self, items: list[JSON]) -> None:
        with self.lock:
            for name in set(self.topologies) - {t["metadata"]["name"] for t in items}:
                self.on_topology("DELETED", {"metadata": {"name": name}})
            for item in items:
                self.on_topology("ADDED", item)

    def on_topology(self, kind: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            if kind == "DELETED":
                if self.topologies.pop(name, None) is not None:
                    self.dra.topology_changed(name)
                    self.dirty = True
                    self._bump()
                return
            spec = obj.get("spec") or {}
            if self.topologies.get(name) != spec:
                self.topologies[name] = spec
                self.dra.topology_changed(name)
                self.dirty = True
                self._bump()

    def replace_podgroups(self, items: list[JSON]) -> None:
        with self.lock:
            self.podgroups = {f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in items}
            self._bump()

    def on_podgroup(self, kind: str, obj: JSON) -> None:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        with self.lock:
            old = self.podgroups.get(key)
            if kind == "DELETED":
                self.podgroups.pop(key, None)
            else:
                self.podgroups[key] = obj
            if (kind != "DELETED" and old is not None and old.get("spec") == obj.get("spec")
                    and old["metadata"].get("uid") == obj["metadata"].get("uid")):
                return  # a status write (ours): nothing to decide anew
            self._bump()

    def replace_quotas(self, items: list[JSON]) -> None:
        with self.lock:
            self.quotas = {f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in items}
            self._bump(freed=True)

    def on_quota(self, kind: str, obj: JSON) -> None:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        with self.lock:
            old = self.quotas.pop(key, None)
            if kind != "DELETED":
                self.quotas[key] = obj
            # a new min/max may let waiting pods in; a status write (ours) changes nothing to retry
            self._bump(freed=old is None or old.get("spec") != obj.get("spec")
                       or old["metadata"].get("labels") != obj["metadata"].get("labels"))

    def replace_namespaces(self, items: list[JSON]) -> None:
        with self.lock:
            self.namespaces = {i["metadata"]["name"]: i["metadata"].get("labels") or {} for i in items}
            self._bump(freed=True)

    def on_namespace(self, kind: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            labels = obj["metadata"].get("labels") or {}
            old = self.namespaces.pop(name, None)
            if kind != "DELETED":
                self.namespaces[name] = labels
            if old != (None if kind == "DELETED" else labels):  # a namespaceSelector may match now
                self._bump(freed=True)

    # DRA (claims.py): slices, claims and classes; what claims hold is kept out of the core's reach
    def replace_slices(self, items: list[JSON]) -> None:
        with self.lock:
            touched = self.dra.replace_slices(items)
            self.dirty = True
            self._dra_changed(touched, freed=True)

    def on_slice(self, kind: str, obj: JSON) -> None:
        with self.lock:
            before = len(self.dra.nodes_with_devices())
            touched = self.dra.on_slice(kind, obj)
            if len(self.dra.nodes_with_devices()) != before:
                self.dirty = True  # a node gained or lost its devices: rebuild (see _node)
            self._dra_changed(touched, freed=True)

    def replace_claims(self, items: list[JSON]) -> None:
        with self.lock:
            self._dra_changed(self.dra.replace_claims(items), freed=True)

    def on_claim(self, kind: str, obj: JSON) -> None:
        with self.lock:
            freed = kind == "DELETED" or not (obj.get("status") or {}).get("allocation")
            self._dra_changed(self.dra.on_claim(kind, obj), freed=freed)

    def replace_classes(self, items: list[JSON]) -> None:
        with self.lock:
            self.dra.replace_classes(items)
            self._bump(freed=True)

    def on_class(self, kind: str, obj: JSON) -> None:
        with self.lock:
            self.dra.on_class(kind, obj)
            self._bump(freed=True)

    def _dra_changed(self, nodes: set[str], freed: bool) -> None:
        for name in nodes:
            self.sync_hold(name)
        self._bump(freed=freed)

    def sync_hold(self, name: str) -> None:
        """Hold in the ledger the GPUs and NICs claims hold on ``name`` that no pod's allocation holds
        (claims allocated by kube-scheduler, shared NICs, claims whose pod is gone)."""
        node = self.cluster.by_name.get(name)
        if node is None or self.dirty:
            return  # the rebuild syncs every node
        key = DRA_HOLD + name
        if key in self.cluster.allocations:
            self.cluster.release(key)
        gpus, nics = self.dra.held(self.dra.node(name, self.topologies.get(name)))
        gpus &= node.whole_free
        nics &= node.nic_free
        if gpus or nics:
            self.cluster.apply(Allocation(key, node.index, 0, 0, tuple(bits(gpus)), MILLI if gpus else 0,
                                          tuple(bits(nics))))

    def replace_pods(self, items: list[JSON]) -> None:
        with self.lock:
            for key in set(self.pods) - {objects.pod_key(p) for p in items}:
                self._remove_pod(key)
            for item in items:
                self.on_pod("ADDED", item)
            self._bump()

    def on_pod(self, kind: str, obj: JSON) -> None:
        key = objects.pod_key(obj)
        with self.lock:
            old = self.pods.get(key)
            if kind == "DELETED" or objects.is_terminal(obj):
                phase = (obj.get("status") or {}).get("phase")
                if old is not None and old.gang is not None and phase in ("Succeeded", "Failed"):
                    self.gang_finished.setdefault(old.gang.key, {})[old.uid] = phase
                if old is None or old.uid == obj["metadata"].get("uid", old.uid):
                    self._remove_pod(key)
                    self._bump(freed=True)
                return
            meta = obj["metadata"]
            if old is not None and old.uid == meta.get("uid") and _rv(meta) <= old.rv:
                return  # stale: an older event after a newer list
            node = (obj.get("spec") or {}).get("nodeName")
            confirms = node is not None and self.assumed.get(key, ("",))[0] == node
            if old is not None and old.uid == meta.get("uid") and node:
                # A bound pod's requests are immutable: skip re-parsing them (most events are
                # status updates of bound pods).
                state = replace(old, rv=_rv(meta), node=node,
                                annotation=(meta.get("annotations") or {}).get(objects.ALLOCATION_ANNOTATION),
                                deleting=bool(meta.get("deletionTimestamp")),
                                phase=_phase(obj), labels=meta.get("labels") or _NO_LABELS)
            else:
                state = PodState.of(obj, self.scheduler_name, self.gpu, self.rdma)
            if old is not None and old.uid != state.uid:
                self._remove_pod(key)
            self.pods[key] = state
            if state.terms is not None:
                self.with_terms.add(key)
            if state.constraints.host_ports:
                self.with_ports.add(key)
            if state.gang is not None:
                self.gang_members.setdefault(state.gang.key, set()).add(key)
            if state.ours and not state.node:
                self.waiting.add(key)
            else:
                self.waiting.discard(key)
            if state.node:
                self._account(state)
            if (old is not None and old.uid == state.uid and state.node and not self.dirty
                    and (old.node == state.node or confirms) and old.deleting == state.deleting
                    and old.labels == state.labels):
                # a bound pod's status, or the watch confirming our own bind: nothing to decide anew
                # (the loop still wakes at least every second for the PodGroup status)
                return
            self._bump()

    def _remove_pod(self, key: str) -> None:
        old = self.pods.pop(key, None)
        if old is not None and old.gang is not None:
            members = self.gang_members.get(old.gang.key)
            if members is not None:
                members.discard(key)
                if not members:
                    del self.gang_members[old.gang.key]
        self.waiting.discard(key)
        self.with_terms.discard(key)
        self.with_ports.discard(key)
        self.assumed.pop(key, None)
        self.foreign.discard(key)
        self.backoff.pop(key, None)
        if key in self.cluster.allocations:
            alloc = self.cluster.release(key)
            if old is not None and old.claims:  # its claims may still hold the devices
                self.sync_hold(self.cluster.nodes[alloc.node].name)

    # -- the ledger ------------------------------------------------------------------------------------
    def _account(self, pod: PodState) -> None:
        """Make the ledger hold ``pod`` on its bound node (confirming an assumption when it matches)."""
        if self.dirty:
            self.assumed.pop(pod.key, None)
            return  # the rebuild accounts for every bound pod
        node = self.cluster.by_name.get(pod.node or "")
        current = self.cluster.allocations.get(pod.key)
        if current is not None and node is not None and current.node == node.index:
            self.assumed.pop(pod.key, None)
            return
        if current is not None:
            self.cluster.release(pod.key)
        self.assumed.pop(pod.key, None)
        if node is not None:
            hold = self.cluster.allocations.get(DRA_HOLD + node.name)
            if hold is not None:  # the pod's own claim devices may be in the hold: the pod takes them
                self.cluster.release(hold.pod)
            self._apply_bound(pod, node)
            if hold is not None or pod.claims:
                self.sync_hold(node.name)

    def _apply_bound(self, pod: PodState, node: Node) -> None:
        alloc = self._from_annotation(pod, node)
        if alloc is not None:
            try:
                self.cluster.apply(alloc)
                self.foreign.discard(pod.key)
                return
            except ModelError:
                if self._rehome(node, alloc):
                    return
        self._apply_foreign(pod, node)

    def _from_annotation(self, pod: PodState, node: Node) -> Allocation | None:
        if not pod.annotation:
            return None
        try:
            ann = PodAllocation.from_annotation(pod.annotation)
        except ValueError:
            log.warning("bad allocation annotation", extra={"pod": pod.key})
            return None
        if ann.node != node.name:
            return None
        rails = tuple((r.gpu, r.nic) for r in ann.rails)
        return Allocation(pod.key, node.index, pod.res.cpu_milli, pod.res.memory_mib,
                          tuple(g.index for g in ann.gpus), 1000 if ann.gpus else 0,
                          tuple(n.index for n in ann.nics), rails, ann.group or "")

    def _rehome(self, node: Node, alloc: Allocation) -> bool:
        """Known devices win over guessed ones: move this node's guessed pods off ``alloc``'s devices."""
        guessed = [k for k in self.foreign if k in self.cluster.allocations
                   and self.cluster.allocations[k].node == node.index]
        for key in guessed:
            self.cluster.release(key)
        try:
            self.cluster.apply(alloc)
            ok = True
            self.foreign.discard(alloc.pod)
        except ModelError:
            ok = False
        for key in guessed:
            self._apply_foreign(self.pods[key], node)
        return ok

    def _apply_foreign(self, pod: PodState, node: Node) -> None:
        gpus = _highest(node.whole_free, pod.res.gpus)
        nics = _highest(node.nic_free, pod.res.rdma)
        cpu = min(pod.res.cpu_milli, max(node.cpu_free, 0))
        mem = min(pod.res.memory_mib, max(node.memory_free, 0))
        if len(gpus) < pod.res.gpus or len(nics) < pod.res.rdma or cpu < pod.res.cpu_milli:
            log.warning("node overcommitted", extra={"pod": pod.key, "node": node.name})
        self.cluster.apply(Allocation(pod.key, node.index, cpu, mem, gpus, 1000 if gpus else 0, nics))
        self.foreign.add(pod.key)

    def rebuild(self) -> None:
        """A new ``Cluster`` from the stores; re-applies bound pods (known devices first) and assumptions."""
        names = sorted(self.nodes)
        self.cluster = Cluster([self._node(i, n) for i, n in enumerate(names)], self.domain_keys)
        self._excluded.clear()
        self.foreign.clear()
        bound = [p for p in self.pods.values() if p.node and p.key not in self.assumed]
        bound.sort(key=lambda p: p.annotation is None)
        for pod in bound:
            node = self.cluster.by_name.get(pod.node or "")
            if node is not None:
                self._apply_bound(pod, node)
        for key, (name, alloc) in list(self.assumed.items()):
            node = self.cluster.by_name.get(name)
            try:
                if node is None:
                    raise ModelError(f"node {name} is gone")
                self.cluster.apply(replace(alloc, node=node.index))
                self.assumed[key] = (name, replace(alloc, node=node.index))
            except ModelError:  # the bind in flight will fail or be seen; keep the count honest
                self.assumed.pop(key)
                if node is not None:
                    self._apply_foreign(self.pods[key], node)
        self.dirty = False
        for name in self.dra.nodes_with_devices():
            self.sync_hold(name)

    def _node(self, index: int, name: str) -> Node:
        obj = self.nodes[name]
        res = objects.node_resources(obj, self.gpu, self.rdma)
        spec = self.topologies.get(name)
        if spec and not res.gpus and not res.rdma and name in self.dra.nodes_with_devices():
            # a DRA node advertises no extended resources: its devices are its NodeTopology's
            res = replace(res, gpus=len(spec.get("gpus") or []), rdma=len(spec.get("nics") or []))
        topo, model = self.topology(name, res)
        return new_node(index, name, res.cpu_milli, res.memory_mib, model, topology=topo,
                        labels=obj["metadata"]["labels"])

    def topology(self, name: str, res: objects.Resources) -> tuple[CompactTopology, str]:
        """The node's NodeTopology when it agrees with what the node advertises; else counts only."""
        spec = self.topologies.get(name)
        if spec:
            gpus, nics = spec.get("gpus") or [], spec.get("nics") or []
            if len(gpus) == res.gpus and len(nics) == res.rdma and res.gpus:
                view = SimpleNamespace(gpus=gpus, nics=nics, gpu_gpu=spec["gpuGpu"], gpu_nic=spec["gpuNic"])
                try:
                    return from_node_topology(view), str(gpus[0].get("model") or "")
                except (ValueError, KeyError) as exc:
                    log.warning("bad NodeTopology", extra={"node": name, "error": str(exc)})
            else:
                log.warning("NodeTopology does not match allocatable; scheduling by counts",
                            extra={"node": name, "gpus": len(gpus), "nics": len(nics)})
        return uniform(res.gpus, res.rdma), ""

    # -- the scheduling loop's side -------------------------------------------------------------------
    def pending(self, now: float) -> list[PodState]:
        """Our unbound pods that hold nothing yet and are not backing off."""
        pods, held, backoff = self.pods, self.cluster.allocations, self.backoff
        return [pods[k] for k in self.waiting if k not in held and backoff.get(k, 0.0) <= now]

    def excluded(self, constraints: objects.Constraints) -> tuple[list[int], dict[str, int]]:
        """Node indices these constraints rule out, and how many per reason (cached until a rebuild)."""
        found = self._excluded.get(constraints.signature)
        if found is None:
            out: list[int] = []
            reasons: dict[str, int] = {}
            for node in self.cluster.nodes:
                why = objects.node_allows(constraints, self.nodes[node.name])
                if why:
                    out.append(node.index)
                    reasons[why] = reasons.get(why, 0) + 1
            found = self._excluded[constraints.signature] = (out, reasons)
        return found

    def host_ports_taken(self, constraints: objects.Constraints) -> tuple[list[int], dict[str, int]]:
        """Nodes where a host port of these constraints is taken now, by a pod holding the node (bound or
        assumed) or by the node's host listeners, with how many per reason (``hostports``). Not part of
        ``excluded``: the members of a gang differ in ports, so ``hostports.plan_gang`` applies them
        member by member instead of blocking their union for the whole gang."""
        if not constraints.host_ports:
            return [], {}
        held: dict[int, list[hostports.HostPort]] = {}
        for key in self.with_ports:  # pods holding a node (bound or assumed) that declare host ports
            alloc = self.cluster.allocations.get(key)
            if alloc is not None:
                held.setdefault(alloc.node, []).extend(self.pods[key].constraints.host_ports)
        return hostports.excluded(constraints.host_ports, held, self._listener_index())

    def _listener_index(self) -> dict[int, frozenset[int]]:
        """Node index -> ports its host processes listen on, per built ``Cluster`` (a changed
        annotation changes the node's signature, so the cluster is rebuilt)."""
        if self._listeners[0] is not self.cluster:
            self._listeners = (self.cluster, {n.index: ports for n in self.cluster.nodes
                                              if (ports := hostports.listeners_of(self.nodes[n.name]))})
        return self._listeners[1]

    def placed(self) -> list[interpod.Placed]:
        """Every pod holding a node (bound or assumed), for inter-pod affinity."""
        pods = self.pods
        out = []
        for key, alloc in self.cluster.allocations.items():
            pod = pods.get(key)
            if pod is not None:
                out.append(interpod.Placed(pod.namespace, pod.labels, alloc.node, pod.terms))
        return out

    def anti_holders(self) -> bool:
        """Does any pod that holds a node carry required anti-affinity terms?"""
        held = self.cluster.allocations
        return any(k in held and (t := self.pods[k].terms) is not None and t.anti for k in self.with_terms)

    def node_labels(self) -> list[Mapping[str, str]]:
        return [n.labels for n in self.cluster.nodes]

    def assume(self, allocations: Iterable[Allocation]) -> None:
        """Hold the decided devices before the bind is sent (the allocations are already applied)."""
        for alloc in allocations:
            self.assumed[alloc.pod] = (self.cluster.nodes[alloc.node].name, alloc)
            self.backoff.pop(alloc.pod, None)

    def _release_pod(self, key: str) -> None:
        """Give a pod's devices back, except what its claims still hold (they stay allocated)."""
        alloc = self.cluster.release(key)
        pod = self.pods.get(key)
        if pod is not None and pod.claims:
            self.sync_hold(self.cluster.nodes[alloc.node].name)

    def finish_binding(self, key: str) -> None:
        """The bind succeeded; the assumption now waits for the watch to confirm it (``expire_assumed``)."""
        with self.lock:
            if key in self.assumed:
                self.bound_at[key] = time.monotonic()

    def expire_assumed(self, now: float, ttl: float) -> list[str]:
        """Forget assumptions whose bind succeeded more than ``ttl`` ago but that the watch never
        confirmed (kube-scheduler's assume-cache expiry): their devices are released."""
        expired = []
        with self.lock:
            for key, at in list(self.bound_at.items()):
                if key not in self.assumed:
                    del self.bound_at[key]  # confirmed, forgotten or removed meanwhile
                elif ttl > 0 and now - at > ttl:
                    del self.bound_at[key]
                    self.assumed.pop(key)
                    if key in self.cluster.allocations:
                        self._release_pod(key)
                    expired.append(key)
            if expired:
                self._bump(freed=True)
        return expired

    def forget(self, key: str, retry_after: float = 1.0) -> None:
        """A bind failed: give the devices back and retry the pod later (if it still waits)."""
        with self.lock:
            if key in self.assumed:
                self.assumed.pop(key)
                if key in self.cluster.allocations:
                    self._release_pod(key)
            self.backoff[key] = time.monotonic() + retry_after
            self._bump(freed=True)


def _highest(mask: int, count: int) -> tuple[int, ...]:
    out: list[int] = []
    while mask and len(out) < count:
        top = mask.bit_length() - 1
        out.append(top)
        mask &= ~(1 << top)
    return tuple(sorted(out))
