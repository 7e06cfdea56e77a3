"""The in-memory cluster model (the snapshot): nodes, their free devices, and what is allocated.

Pure data plus the bookkeeping that keeps it consistent. Decisions live elsewhere (``placement``,
``gang``, ``quota``); they read a ``Cluster`` and return ``Allocation`` records, and only
``Cluster.apply`` / ``Cluster.release`` change it.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from scheduler.domains import DEFAULT_DOMAIN_KEYS, DomainIndex
from scheduler.intranode import DeviceRequest
from scheduler.topology import CompactTopology, Scope, mask_of, uniform, varied

MILLI = 1000  # milli-GPU per GPU


class ModelError(ValueError):
    """Bad input to the model: says which object and which field."""


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What one pod asks for. ``gpu_milli`` is per GPU: 1000 for whole GPUs, less for a share."""

    name: str
    cpu_milli: int = 0
    memory_mib: int = 0
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_models: frozenset[str] = frozenset()  # empty: any model
    rdma_nics: int = 0
    required_scope: Scope = Scope.ANY
    preferred_scope: Scope | None = None

    def shape(self) -> tuple[object, ...]:
        """Everything the pod asks for, without its name: pods of one shape place alike."""
        return (self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli, self.gpu_models,
                self.rdma_nics, self.required_scope, self.preferred_scope)

    def __post_init__(self) -> None:
        if min(self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli, self.rdma_nics) < 0:
            raise ModelError(f"pod {self.name}: resource requests must be >= 0")
        if self.num_gpu == 0 and self.gpu_milli:
            raise ModelError(f"pod {self.name}: gpu_milli={self.gpu_milli} without num_gpu")
        if self.num_gpu and not 0 < self.gpu_milli <= MILLI:
            raise ModelError(
                f"pod {self.name}: gpu_milli must be in 1..{MILLI} per GPU, got {self.gpu_milli}"
            )
        if self.num_gpu > 1 and self.gpu_milli != MILLI:
            raise ModelError(f"pod {self.name}: a GPU share (gpu_milli < {MILLI}) needs num_gpu == 1")

    @property
    def shares_gpu(self) -> bool:
        return self.num_gpu == 1 and self.gpu_milli < MILLI

    @property
    def whole_gpus(self) -> int:
        return 0 if self.shares_gpu else self.num_gpu

    @property
    def total_gpu_milli(self) -> int:
        return self.num_gpu * self.gpu_milli

    def device_request(self, nics: int | None = None) -> DeviceRequest:
        return DeviceRequest(
            self.whole_gpus,
            self.rdma_nics if nics is None else nics,
            self.required_scope,
            self.preferred_scope,
        )


@dataclass(slots=True)
class Node:
    """A node and its free resources. GPU and NIC indices follow the node's topology."""

    index: int
    name: str
    cpu_milli: int
    memory_mib: int
    gpu_model: str
    topology: CompactTopology
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu_free: int = 0
    memory_free: int = 0
    gpu_free_milli: list[int] = field(default_factory=list)
    whole_free: int = 0  # mask of GPUs with all MILLI free
    nic_free: int = 0  # mask of free RDMA NICs

    @property
    def gpu_count(self) -> int:
        return self.topology.n_gpus

    @property
    def nic_count(self) -> int:
        return self.topology.n_nics

    @property
    def gpu_free_total(self) -> int:
        return sum(self.gpu_free_milli)

    def accepts_model(self, pod: PodSpec) -> bool:
        return not pod.num_gpu or not pod.gpu_models or self.gpu_model in pod.gpu_models

    def fits_host(self, pod: PodSpec) -> bool:
        """CPU, memory, GPU model and device counts; the device choice itself is not checked."""
        if pod.cpu_milli > self.cpu_free or pod.memory_mib > self.memory_free:
            return False
        if not self.accepts_model(pod):
            return False
        if pod.rdma_nics > self.nic_free.bit_count():
            return False
        if pod.shares_gpu:
            return any(free >= pod.gpu_milli for free in self.gpu_free_milli)
        return pod.num_gpu <= self.whole_free.bit_count()


def new_node(
    index: int,
    name: str,
    cpu_milli: int,
    memory_mib: int,
    gpu_model: str = "",
    gpus: int = 0,
    topology: CompactTopology | None = None,
    labels: Mapping[str, str] | None = None,
) -> Node:
    """A node with everything free. Without a topology its devices are at an unknown distance."""
    topo = topology if topology is not None else uniform(gpus)
    if topology is not None and gpus and topo.n_gpus != gpus:
        raise ModelError(f"node {name}: topology has {topo.n_gpus} GPUs but the node lists {gpus}")
    if min(cpu_milli, memory_mib) < 0:
        raise ModelError(f"node {name}: capacity must be >= 0")
    return Node(
        index=index,
        name=name,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        gpu_model=gpu_model,
        topology=topo,
        labels=dict(labels or {}),
        cpu_free=cpu_milli,
        memory_free=memory_mib,
        gpu_free_milli=[MILLI] * topo.n_gpus,
        whole_free=topo.all_gpus,
        nic_free=topo.all_nics,
    )


@dataclass(frozen=True, slots=True)
class Allocation:
    """One pod's reservation on one node: the record the act layer writes on the pod."""

    pod: str
    node: int
    cpu_milli: int
    memory_mib: int
    gpus: tuple[int, ...]
    gpu_milli: int  # per GPU
    nics: tuple[int, ...] = ()
    rails: tuple[tuple[int, int], ...] = ()
    group: str = ""  # gang or job this pod belongs to

    @property
    def total_gpu_milli(self) -> int:
        return len(self.gpus) * self.gpu_milli


StateKey = tuple[object, ...]


def state_key(node: Node) -> StateKey:
    """Everything a policy's score reads from a node: nodes with equal keys score alike.

    The number of fully free GPUs is part of every key: it is the bit count of ``whole_free``, or
    the count of entries at ``MILLI`` in the sorted free milli (the model keeps the two in step).
    """
    topo = node.topology
    return (
        node.gpu_model,
        node.cpu_milli,
        node.memory_mib,
        topo.topo_id,
        node.cpu_free,
        node.memory_free,
        tuple(sorted(node.gpu_free_milli)),
        (node.whole_free, node.nic_free) if topo.n_nics or varied(topo) else None,
    )


class StateGroup:
    """The nodes of a cluster that are in one state (one ``state_key``)."""

    __slots__ = ("key", "whole_free", "members", "_heap")

    def __init__(self, key: StateKey, whole_free: int) -> None:
        self.key = key
        self.whole_free = whole_free  # fully free GPUs of every member
        self.members: set[int] = set()
        # node indices, a min-heap; entries of nodes that left are dropped lazily by ``first``
        self._heap: list[int] = []

    def add(self, index: int) -> None:
        self.members.add(index)
        heapq.heappush(self._heap, index)
        if len(self._heap) > 2 * len(self.members) + 16:  # too many stale entries: rebuild
            self._heap = sorted(self.members)

    def first(self, skip: Container[int] = ()) -> int | None:
        """The lowest member index not in ``skip`` (None when every member is skipped)."""
        heap, members = self._heap, self.members
        while heap[0] not in members:
            heapq.heappop(heap)
        if heap[0] not in skip:
            return heap[0]
        return next((i for i in _ascending(heap) if i in members and i not in skip), None)


def _ascending(heap: list[int]) -> Iterator[int]:
    """The entries of a min-heap in ascending order, lazily: O(k log k) for the first k."""
    frontier = [(heap[0], 0)] if heap else []
    while frontier:
        value, pos = heapq.heappop(frontier)
        yield value
        for child in (2 * pos + 1, 2 * pos + 2):
            if child < len(heap):
                heapq.heappush(frontier, (heap[child], child))


class StateIndex:
    """Nodes grouped by state, kept current by ``Cluster.apply``/``release``.

    A one-pod decision scores each group once and takes its lowest-index member (``gang``) instead
    of visiting every node. Groups that become empty are dropped.
    """

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.groups: dict[StateKey, StateGroup] = {}
        self._key_of: dict[int, StateKey] = {}
        for node in nodes:
            self.update(node)

    def update(self, node: Node) -> None:
        """File ``node`` under its current state (a no-op when the state did not change)."""
        key = state_key(node)
        old = self._key_of.get(node.index)
        if old == key:
            return
        if old is not None:
            left = self.groups[old]
            left.members.discard(node.index)
            if not left.members:
                del self.groups[old]
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = StateGroup(key, node.whole_free.bit_count())
        group.add(node.index)
        self._key_of[node.index] = key


class Cluster:
    """Nodes + ledger of allocations, with the indexes placement needs to stay O(candidates)."""

    def __init__(self, nodes: Iterable[Node], domain_keys: tuple[str, ...] = DEFAULT_DOMAIN_KEYS) -> None:
        self.nodes: list[Node] = list(nodes)
        for pos, node in enumerate(self.nodes):
            if node.index != pos:
                raise ModelError(f"node {node.name}: index {node.index} but it is at position {pos}")
        self.by_name = {node.name: node for node in self.nodes}
        if len(self.by_name) != len(self.nodes):
            raise ModelError("node names must be unique")
        self.allocations: dict[str, Allocation] = {}
        self.domains = DomainIndex(self.nodes, domain_keys)
        self.gpu_capacity_milli = sum(n.gpu_count for n in self.nodes) * MILLI
        self.gpu_allocated_milli = 0
        # by_whole_free[k]: nodes with exactly k fully free GPUs (best-fit lookups).
        max_gpus = max((n.gpu_count for n in self.nodes), default=0)
        self.by_whole_free: list[set[int]] = [set() for _ in range(max_gpus + 1)]
        for node in self.nodes:
            self.by_whole_free[node.whole_free.bit_count()].add(node.index)
            self.domains.add_free(node, node.whole_free.bit_count())
        self._states: StateIndex | None = None  # built on first use: replay clusters never need it

    # -- queries ---------------------------------------------------------------------------------
    def nodes_with_whole_free(self, at_least: int) -> Iterable[int]:
        """Node indices with >= ``at_least`` fully free GPUs, tightest first (best fit).

        Within one count the order is the set's (stable for a given history, not sorted: sorting
        thousands of nodes per decision would cost more than the decision). Do not apply or
        release allocations while iterating; plan in a ``ClusterView``."""
        for count in range(max(at_least, 0), len(self.by_whole_free)):
            yield from self.by_whole_free[count]

    def states(self) -> StateIndex:
        """Nodes grouped by state (``state_key``), kept current from now on."""
        if self._states is None:
            self._states = StateIndex(self.nodes)
        return self._states

    @property
    def gpu_allocated_fraction(self) -> float:
        return self.gpu_allocated_milli / self.gpu_capacity_milli if self.gpu_capacity_milli else 0.0

    def check(self, alloc: Allocation) -> str | None:
        """Why ``alloc`` cannot be applied now, or None if it can."""
        if alloc.pod in self.allocations:
            return f"pod {alloc.pod} is already allocated"
        node = self.nodes[alloc.node]
        if alloc.cpu_milli > node.cpu_free or alloc.memory_mib > node.memory_free:
            return f"node {node.name}: not enough CPU or memory for {alloc.pod}"
        for gpu in alloc.gpus:
            if not 0 <= gpu < node.gpu_count or node.gpu_free_milli[gpu] < alloc.gpu_milli:
                return f"node {node.name}: GPU {gpu} cannot take {alloc.gpu_milli} milli for {alloc.pod}"
        if len(set(alloc.gpus)) != len(alloc.gpus) or len(set(alloc.nics)) != len(alloc.nics):
            return f"pod {alloc.pod}: devices listed twice"
        nic_mask = mask_of(alloc.nics)
        if nic_mask & ~node.nic_free:
            return f"node {node.name}: NICs {alloc.nics} are not all free for {alloc.pod}"
        return None

    # -- mutations -------------------------------------------------------------------------------
    def apply(self, alloc: Allocation) -> None:
        problem = self.check(alloc)
        if problem:
            raise ModelError(problem)
        node = self.nodes[alloc.node]
        before = node.whole_free.bit_count()
        node.cpu_free -= alloc.cpu_milli
        node.memory_free -= alloc.memory_mib
        for gpu in alloc.gpus:
            node.gpu_free_milli[gpu] -= alloc.gpu_milli
            node.whole_free &= ~(1 << gpu)
        node.nic_free &= ~mask_of(alloc.nics)
        self.gpu_allocated_milli += alloc.total_gpu_milli
        self.allocations[alloc.pod] = alloc
        self._reindex(node, before)

    def release(self, pod: str) -> Allocation:
        alloc = self.allocations.pop(pod)
        node = self.nodes[alloc.node]
        before = node.whole_free.bit_count()
        node.cpu_free += alloc.cpu_milli
        node.memory_free += alloc.memory_mib
        for gpu in alloc.gpus:
            node.gpu_free_milli[gpu] += alloc.gpu_milli
            if node.gpu_free_milli[gpu] == MILLI:
                node.whole_free |= 1 << gpu
        node.nic_free |= mask_of(alloc.nics)
        self.gpu_allocated_milli -= alloc.total_gpu_milli
        self._reindex(node, before)
        return alloc

    def _reindex(self, node: Node, before: int) -> None:
        if self._states is not None:
            self._states.update(node)
        after = node.whole_free.bit_count()
        if after != before:
            self.by_whole_free[before].discard(node.index)
            self.by_whole_free[after].add(node.index)
            self.domains.add_free(node, after - before)
