"""A copy-on-write view of a Cluster: the scratch space of one scheduling transaction.

Planning reserves devices in the view only; the live cluster changes when the whole plan is
committed (``commit``), so a gang that cannot be placed completely never holds anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from scheduler.model import MILLI, Allocation, Cluster, ModelError, Node
from scheduler.topology import mask_of


class ClusterView:
    """Reads fall through to the parent (the cluster or an enclosing view); writes stay here."""

    def __init__(self, parent: Cluster | ClusterView) -> None:
        self.parent = parent
        self.cluster: Cluster = parent if isinstance(parent, Cluster) else parent.cluster
        self._overlay: dict[int, Node] = {}
        self.reserved: list[Allocation] = []

    def node(self, index: int) -> Node:
        """Current state of a node in this view. Read only: use ``reserve`` to change it."""
        found = self._overlay.get(index)
        if found is not None:
            return found
        return self.parent.nodes[index] if isinstance(self.parent, Cluster) else self.parent.node(index)

    def child(self) -> ClusterView:
        """A nested transaction; ``absorb`` it to keep its reservations."""
        return ClusterView(self)

    def absorb(self, child: ClusterView) -> None:
        for alloc in child.reserved:
            self.reserve(alloc)

    def reserve(self, alloc: Allocation) -> None:
        node = self._overlay.get(alloc.node)
        if node is None:
            live = self.node(alloc.node)
            node = replace(live, gpu_free_milli=list(live.gpu_free_milli))
            self._overlay[alloc.node] = node
        if alloc.cpu_milli > node.cpu_free or alloc.memory_mib > node.memory_free:
            raise ModelError(f"view: node {node.name} cannot hold {alloc.pod}")
        node.cpu_free -= alloc.cpu_milli
        node.memory_free -= alloc.memory_mib
        for gpu in alloc.gpus:
            if node.gpu_free_milli[gpu] < alloc.gpu_milli:
                raise ModelError(f"view: GPU {gpu} of {node.name} cannot hold {alloc.pod}")
            node.gpu_free_milli[gpu] -= alloc.gpu_milli
            if node.gpu_free_milli[gpu] < MILLI:
                node.whole_free &= ~(1 << gpu)
        nics = mask_of(alloc.nics)
        if nics & ~node.nic_free:
            raise ModelError(f"view: NICs {alloc.nics} of {node.name} are not free for {alloc.pod}")
        node.nic_free &= ~nics
        self.reserved.append(alloc)

    def block(self, index: int) -> None:
        """Make a node unusable in this view only (a pod's taints, selector or affinity exclude it).

        It shows nothing free, so every fit check fails; ``commit`` never writes it back."""
        live = self.node(index)
        self._overlay[index] = replace(
            live, cpu_free=-1, memory_free=-1, gpu_free_milli=[0] * len(live.gpu_free_milli), whole_free=0,
            nic_free=0,
        )

    def touched(self) -> Iterable[int]:
        return self._overlay.keys()

    def changed(self) -> set[int]:
        """Nodes whose state here differs from the cluster's: touched by this view or an enclosing one."""
        out: set[int] = set()
        view: Cluster | ClusterView = self
        while isinstance(view, ClusterView):
            out.update(view._overlay)
            view = view.parent
        return out

    def commit(self) -> None:
        """Apply this view's reservations to the cluster, all or none."""
        commit(self.cluster, self.reserved)


def commit(cluster: Cluster, allocations: Sequence[Allocation]) -> None:
    """Apply every allocation or none: on the first failure the applied ones are released."""
    applied: list[str] = []
    try:
        for alloc in allocations:
            cluster.apply(alloc)
            applied.append(alloc.pod)
    except ModelError:
        for pod in reversed(applied):
            cluster.release(pod)
        raise
