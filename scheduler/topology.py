"""Compact intra-node topology: the form the placement code works on.

The node agent publishes ``netmanager.topology.model.NodeTopology`` (pydantic, lists of lists,
PCI details). Placement runs millions of times, so it works on an interned, immutable copy of
the two tier matrices plus a few precomputed bitmasks. Two nodes with the same matrices share one
``CompactTopology`` object, which makes ``topo_id`` a good memoisation key.

``Tier`` (NVLINK=0 ... CROSS_SOCKET=5, smaller is closer) is the agent's own enum, imported from
``netmanager.topology.tiers``: that module needs only the standard library, so the scheduler does
not pull in pydantic or the discovery code. ``Tier`` is re-exported from here for scheduler code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Protocol

from netmanager.topology.tiers import Tier

__all__ = [
    "NO_DEVICE",
    "TIER_COUNT",
    "CompactTopology",
    "Scope",
    "Tier",
    "bits",
    "from_node_topology",
    "intern",
    "mask_of",
    "uniform",
    "varied",
]


class Scope(IntEnum):
    """How close a pod's devices must (required) or should (preferred) be: the worst tier allowed."""

    SAME_SWITCH = Tier.SAME_SWITCH
    SAME_NUMA = Tier.SAME_NUMA
    SAME_SOCKET = Tier.SAME_SOCKET
    ANY = Tier.CROSS_SOCKET


TIER_COUNT = len(Tier)


@dataclass(frozen=True, eq=False)
class CompactTopology:
    """Interned tier matrices of one node shape. Compare and hash by identity (see ``intern``)."""

    topo_id: int
    gpu_gpu: tuple[tuple[int, ...], ...]
    gpu_nic: tuple[tuple[int, ...], ...]
    n_gpus: int
    n_nics: int
    # within[t][i]: bitmask of GPUs j with gpu_gpu[i][j] <= t (i itself included).
    within: tuple[tuple[int, ...], ...] = field(repr=False)
    # Best tier from each GPU to any NIC on the node (CROSS_SOCKET + 1 when the node has none).
    gpu_best_nic: tuple[int, ...] = field(repr=False)
    # Best tier from each NIC to any GPU on the node.
    nic_best_gpu: tuple[int, ...] = field(repr=False)

    @property
    def all_gpus(self) -> int:
        return (1 << self.n_gpus) - 1

    @property
    def all_nics(self) -> int:
        return (1 << self.n_nics) - 1

    def gpu_set_tier(self, gpus: Sequence[int]) -> int:
        """Worst pairwise GPU-GPU tier of a set (NVLINK for one GPU or none)."""
        worst = 0
        rows = self.gpu_gpu
        for a_pos, a in enumerate(gpus):
            row = rows[a]
            for b in gpus[a_pos + 1 :]:
                tier = row[b]
                if tier > worst:
                    worst = tier
        return worst


NO_DEVICE = TIER_COUNT  # "no such device reachable": one step worse than CROSS_SOCKET

_INTERNED: dict[tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]], CompactTopology] = {}


def intern(gpu_gpu: Sequence[Sequence[int]], gpu_nic: Sequence[Sequence[int]]) -> CompactTopology:
    """Return the shared CompactTopology for these matrices, validating their shape and values."""
    gg = tuple(tuple(int(v) for v in row) for row in gpu_gpu)
    n_gpus = len(gg)
    gn = tuple(tuple(int(v) for v in row) for row in gpu_nic) if gpu_nic else tuple(() for _ in range(n_gpus))
    key = (gg, gn)
    found = _INTERNED.get(key)
    if found is not None:
        return found
    _validate(gg, gn)
    n_nics = len(gn[0]) if n_gpus else 0
    within = tuple(
        tuple(sum(1 << j for j in range(n_gpus) if j == i or gg[i][j] <= t) for i in range(n_gpus))
        for t in range(TIER_COUNT)
    )
    gpu_best_nic = tuple(min(row) if row else NO_DEVICE for row in gn)
    nic_best_gpu = tuple(min(gn[i][k] for i in range(n_gpus)) for k in range(n_nics))
    topo = CompactTopology(
        topo_id=len(_INTERNED),
        gpu_gpu=gg,
        gpu_nic=gn,
        n_gpus=n_gpus,
        n_nics=n_nics,
        within=within,
        gpu_best_nic=gpu_best_nic,
        nic_best_gpu=nic_best_gpu,
    )
    _INTERNED[key] = topo
    return topo


def _validate(gg: tuple[tuple[int, ...], ...], gn: tuple[tuple[int, ...], ...]) -> None:
    n = len(gg)
    if any(len(row) != n for row in gg):
        raise ValueError(f"gpu_gpu must be square, got {n} rows of lengths {[len(r) for r in gg]}")
    if len(gn) != n:
        raise ValueError(f"gpu_nic must have one row per GPU ({n}), got {len(gn)}")
    if n and len({len(row) for row in gn}) > 1:
        raise ValueError("gpu_nic rows must all have the same length (one column per NIC)")
    for name, matrix in (("gpu_gpu", gg), ("gpu_nic", gn)):
        for row in matrix:
            for value in row:
                if not Tier.NVLINK <= value <= Tier.CROSS_SOCKET:
                    raise ValueError(f"{name} holds {value}, outside Tier 0..5")
    for i in range(n):
        for j in range(n):
            if gg[i][j] != gg[j][i]:
                raise ValueError(
                    f"gpu_gpu must be symmetric: [{i}][{j}]={gg[i][j]} but [{j}][{i}]={gg[j][i]}"
                )


def uniform(n_gpus: int, n_nics: int = 0, tier: int = Tier.CROSS_SOCKET) -> CompactTopology:
    """A node whose internals are unknown: every pair at one tier (CROSS_SOCKET means "unknown")."""
    gg = [[0 if i == j else tier for j in range(n_gpus)] for i in range(n_gpus)]
    gn = [[tier] * n_nics for _ in range(n_gpus)]
    return intern(gg, gn)


@lru_cache(maxsize=256)
def varied(topo: CompactTopology) -> bool:
    """True when GPU pairs sit at different tiers, i.e. the node's topology is known."""
    values = {v for i, row in enumerate(topo.gpu_gpu) for j, v in enumerate(row) if i != j}
    return len(values) > 1


class _NodeTopologyLike(Protocol):
    """The fields of netmanager's NodeTopology the adapter reads (duck-typed on purpose)."""

    @property
    def gpus(self) -> Sequence[object]: ...

    @property
    def nics(self) -> Sequence[object]: ...

    @property
    def gpu_gpu(self) -> Sequence[Sequence[int]]: ...

    @property
    def gpu_nic(self) -> Sequence[Sequence[int]]: ...


def from_node_topology(topology: _NodeTopologyLike) -> CompactTopology:
    """Adapter from the agent's NodeTopology (matrices indexed by Gpu.index and NIC position)."""
    n_gpus, n_nics = len(topology.gpus), len(topology.nics)
    if len(topology.gpu_gpu) != n_gpus or len(topology.gpu_nic) != n_gpus:
        raise ValueError(f"NodeTopology matrices do not match its {n_gpus} GPUs")
    if any(len(row) != n_nics for row in topology.gpu_nic):
        raise ValueError(f"NodeTopology gpu_nic rows do not match its {n_nics} NICs")
    return intern(topology.gpu_gpu, topology.gpu_nic)


def bits(mask: int) -> list[int]:
    """Indices of the set bits, lowest first."""
    out = []
    index = 0
    while mask:
        if mask & 1:
            out.append(index)
        mask >>= 1
        index += 1
    return out


def mask_of(indices: Sequence[int]) -> int:
    out = 0
    for i in indices:
        out |= 1 << i
    return out
