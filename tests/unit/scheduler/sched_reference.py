"""Brute-force references the property tests compare the fast code against.

Written for clarity, not speed: every GPU set, every NIC set and every pairing is enumerated, and
rails are compared as sorted tier tuples (not through the B**tier encoding the fast code uses).
"""

from __future__ import annotations

from itertools import combinations, product

from scheduler.device_fragmentation import device_fragmentation
from scheduler.topology import CompactTopology, bits, mask_of


def _pairings(
    g: tuple[int, ...], n: tuple[int, ...]
) -> list[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]]:
    """All balanced pairings as (partner sequence of the larger side, sorted (gpu, nic) pairs)."""
    if not g or not n:
        return [((), ())]
    large, small = (g, n) if len(g) >= len(n) else (n, g)
    cap = -(-len(large) // len(small))
    out = []
    for choice in product(range(len(small)), repeat=len(large)):
        loads = [choice.count(p) for p in range(len(small))]
        if min(loads) < 1 or max(loads) > cap:
            continue
        seq = tuple(small[p] for p in choice)
        if len(g) >= len(n):
            pairs = tuple(sorted(zip(large, seq, strict=True)))
        else:
            pairs = tuple(sorted((gpu, nic) for nic, gpu in zip(large, seq, strict=True)))
        out.append((seq, pairs))
    return out


def brute_force_plan(
    topo: CompactTopology,
    free_gpus: int,
    free_nics: int,
    g: int,
    n: int,
    required: int,
    preferred: int | None,
) -> dict[str, object] | None:
    best: tuple[object, ...] | None = None
    answer: dict[str, object] | None = None
    for gset in combinations(bits(free_gpus & topo.all_gpus), g):
        gpu_tier = max((topo.gpu_gpu[a][b] for a, b in combinations(gset, 2)), default=0)
        for nset in combinations(bits(free_nics & topo.all_nics), n):
            for seq, pairs in _pairings(gset, nset):
                tiers = tuple(sorted((topo.gpu_nic[i][k] for i, k in pairs), reverse=True))
                worst = tiers[0] if tiers else -1
                if gpu_tier > required or worst > required:
                    continue
                out = preferred is not None and (gpu_tier > preferred or worst > preferred)
                frag = device_fragmentation(topo, free_gpus & ~mask_of(gset), free_nics & ~mask_of(nset))
                key = (out, gpu_tier, tiers, frag, gset, nset, seq)
                if best is None or key < best:
                    best = key
                    answer = {
                        "gpus": gset,
                        "nics": nset,
                        "rails": pairs,
                        "gpu_tier": gpu_tier,
                        "rail_tiers": tiers,
                        "in_preferred_scope": not out,
                        "fragmentation": frag,
                    }
    return answer
