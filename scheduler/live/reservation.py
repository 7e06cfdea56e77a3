"""Head-of-line reservation: the unit at the head of the queue that does not fit holds nodes as they
free up, so a large gang is not overtaken forever by small pods (starvation-free queueing).

The queue is priority, then FIFO (``gangs.collect``). Units behind the head may still be placed, but
only on nodes the head has not reserved: backfill (Kueue's BestEffortFIFO) with Volcano's
elect + reserve (its ``reservation`` plugin elects the highest-priority starving job and locks the
nodes with the most idle resources for it). A strict FIFO (Kueue's StrictFIFO) would also be starvation
free but idles the whole cluster behind one gang; reserving only the nodes the head needs idles at most
those. One reservation at a time: the unit earliest in the order that does not fit takes it.

Nodes are chosen by packing the members, largest first, onto the nodes with the most free GPUs now
(NICs, then name, break ties), counting each node's *total* capacity: those are the nodes that drain
into a fit soonest. Pure: works on the core's ``Cluster``/``ClusterView``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scheduler.gang import Gang
from scheduler.model import Cluster

DEFAULT_HOLD_S = 300.0  # a holder not placed within this gives its nodes up (then may not reserve again for as long)


@dataclass(frozen=True)
class Reservation:
    key: str  # the unit holding it
    order: tuple[object, ...]  # its place in the queue
    nodes: frozenset[str]  # node names (indices change when the cluster is rebuilt)
    since: float  # monotonic


def choose_nodes(cluster: Cluster, gang: Gang, excluded: Iterable[int]) -> frozenset[str] | None:
    """Nodes on which ``gang.need`` members fit once they are empty, freest first; None if none can."""
    out = set(excluded)
    candidates = [n for n in cluster.nodes if n.index not in out]
    candidates.sort(key=lambda n: (-n.whole_free.bit_count(), -n.nic_free.bit_count(), n.name))
    members = sorted(gang.members, key=lambda m: (-m.num_gpu, -m.rdma_nics, -m.cpu_milli, m.name))[: gang.need]
    room = {n.index: [n.gpu_count, n.nic_count, n.cpu_milli, n.memory_mib] for n in candidates}
    chosen: list[str] = []
    for member in members:
        want = (member.num_gpu, member.rdma_nics, member.cpu_milli, member.memory_mib)
        for node in candidates:
            left = room[node.index]
            if all(have >= need for have, need in zip(left, want, strict=True)):
                room[node.index] = [have - need for have, need in zip(left, want, strict=True)]
                if node.name not in chosen:
                    chosen.append(node.name)
                break
        else:
            return None
    return frozenset(chosen)


def indices(cluster: Cluster, reservation: Reservation) -> list[int]:
    return [cluster.by_name[name].index for name in reservation.nodes if name in cluster.by_name]
