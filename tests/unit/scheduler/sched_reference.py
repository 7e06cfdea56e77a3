"""Brute-force reference for joint GPU + NIC placement on one node.

Written from the rules in docs/scheduler.md ("Joint GPU + NIC placement on one node") and the
``scheduler/intranode.py`` docstring, and sharing no code with ``scheduler/``: it works on plain
tier matrices (lists of lists of ints) and sets of indices, and scores a candidate with its own
code. A candidate (GPU set, NIC set, rails) is ranked by, smallest first:

1. outside the preferred scope (False first), when the pod names one;
2. the worst GPU-GPU tier of the set (0 for one GPU);
3. the rail tiers sorted worst first, compared as tuples (every candidate of one request has the
   same number of rails, max(g, n));
4. the fragmentation left behind: (rail loss, spread);
5. the GPU indices, then the NIC indices.

A required scope drops candidates whose GPU tier or worst rail is beyond it. A scope (and a tier)
is an int: SAME_SWITCH=1, SAME_NUMA=3, SAME_SOCKET=4, ANY=CROSS_SOCKET=5; smaller is closer.

Enumeration is exhaustive; two prunings keep 8 GPU x 8 NIC nodes fast, both sound because they
only skip candidates whose rank cannot beat the best one found:

* a candidate's rails are bounded below by giving every item of the larger side its closest
  partner on the smaller side (ignoring the balance rule): each real rail is at least that tier,
  so the real sorted tuple is >= the bound's, element by element and hence as a tuple;
* the pairing search is branch and bound with the same bound on the items not yet paired.

``naive_best`` enumerates without any pruning (every pairing through ``itertools.product``); the
tests compare the two on small nodes, so the pruning itself is checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations, product

CROSS_SOCKET = 5
NO_PARTNER = CROSS_SOCKET + 1  # "a NIC or GPU left with no partner counts one step past CROSS_SOCKET"

Matrix = Sequence[Sequence[int]]
# (outside preferred, GPU tier, rail tiers worst first, (rail loss, spread))
Score = tuple[bool, int, tuple[int, ...], tuple[int, int]]


@dataclass(frozen=True)
class Choice:
    gpus: tuple[int, ...]
    nics: tuple[int, ...]
    rails: tuple[tuple[int, int], ...]  # (gpu, nic), sorted
    score: Score


def gpu_set_tier(gg: Matrix, gpus: Sequence[int]) -> int:
    return max((gg[a][b] for a, b in combinations(gpus, 2)), default=0)


def rail_tiers(gn: Matrix, rails: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(sorted((gn[i][k] for i, k in rails), reverse=True))


def is_balanced(gpus: Sequence[int], nics: Sequence[int], rails: Sequence[tuple[int, int]]) -> bool:
    """The documented pairing rule, checked directly on a list of (gpu, nic) rails."""
    if not gpus or not nics:
        return not rails
    if len(set(rails)) != len(rails) or any(i not in gpus or k not in nics for i, k in rails):
        return False
    per_gpu = [sum(1 for i, _ in rails if i == gpu) for gpu in gpus]
    per_nic = [sum(1 for _, k in rails if k == nic) for nic in nics]
    g, n = len(gpus), len(nics)
    if n <= g:  # every GPU has exactly one NIC; each NIC serves 1..ceil(g/n) GPUs
        return all(c == 1 for c in per_gpu) and all(1 <= c <= -(-g // n) for c in per_nic)
    return all(c == 1 for c in per_nic) and all(1 <= c <= -(-n // g) for c in per_gpu)


def fragmentation(gg: Matrix, gn: Matrix, left_gpus: Sequence[int], left_nics: Sequence[int]) -> tuple[int, int]:
    """(rail loss, spread) of the devices left free, per the docs' definition."""
    all_nics = range(len(gn[0])) if gn else range(0)
    loss = 0
    for i in left_gpus:
        empty_node_best = min((gn[i][k] for k in all_nics), default=NO_PARTNER)
        loss += min((gn[i][k] for k in left_nics), default=NO_PARTNER) - empty_node_best
    for k in left_nics:
        empty_node_best = min((gn[i][k] for i in range(len(gn))), default=NO_PARTNER)
        loss += min((gn[i][k] for i in left_gpus), default=NO_PARTNER) - empty_node_best
    spread = sum(gg[a][b] for a, b in combinations(left_gpus, 2))
    return loss, spread


def score(
    gg: Matrix,
    gn: Matrix,
    free_gpus: Sequence[int],
    free_nics: Sequence[int],
    gpus: Sequence[int],
    nics: Sequence[int],
    rails: Sequence[tuple[int, int]],
    preferred: int | None,
) -> Score:
    g_tier = gpu_set_tier(gg, gpus)
    tiers = rail_tiers(gn, rails)
    worst = tiers[0] if tiers else 0
    out = preferred is not None and (g_tier > preferred or worst > preferred)
    left_gpus = [i for i in free_gpus if i not in gpus]
    left_nics = [k for k in free_nics if k not in nics]
    return out, g_tier, tiers, fragmentation(gg, gn, left_gpus, left_nics)


def _sides(gn: Matrix, gpus: Sequence[int], nics: Sequence[int]) -> tuple[list[int], list[int], list[list[int]]]:
    """(larger side, smaller side, tier[larger item][smaller position]); GPUs are larger on ties."""
    if len(gpus) >= len(nics):
        return list(gpus), list(nics), [[gn[i][k] for k in nics] for i in gpus]
    return list(nics), list(gpus), [[gn[i][k] for i in gpus] for k in nics]


def best_rails(gn: Matrix, gpus: Sequence[int], nics: Sequence[int]) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """The balanced pairing with the smallest worst-first tier tuple (branch and bound)."""
    if not gpus or not nics:
        return (), ()
    large, small, tier = _sides(gn, gpus, nics)
    cap = -(-len(large) // len(small))
    closest = [min(row) for row in tier]
    loads = [0] * len(small)
    chosen: list[int] = []
    best: list[object] = [None, None]  # (tiers, partner positions)

    def search(step: int, tiers_so_far: list[int]) -> None:
        if loads.count(0) > len(large) - step:
            return  # too few items left to give every partner at least one
        bound = tuple(sorted(tiers_so_far + closest[step:], reverse=True))
        if best[0] is not None and bound >= best[0]:  # type: ignore[operator]
            return
        if step == len(large):
            best[0], best[1] = bound, list(chosen)
            return
        for pos in sorted(range(len(small)), key=lambda p: tier[step][p]):
            if loads[pos] >= cap:
                continue
            loads[pos] += 1
            chosen.append(pos)
            search(step + 1, [*tiers_so_far, tier[step][pos]])
            chosen.pop()
            loads[pos] -= 1

    search(0, [])
    assert best[0] is not None, "a balanced pairing always exists"
    partners = best[1]
    assert isinstance(partners, list)
    if len(gpus) >= len(nics):
        rails = tuple(sorted((large[s], small[p]) for s, p in enumerate(partners)))
    else:
        rails = tuple(sorted((small[p], large[s]) for s, p in enumerate(partners)))
    return rail_tiers(gn, rails), rails


def best(
    gg: Matrix,
    gn: Matrix,
    free_gpus: Sequence[int],
    free_nics: Sequence[int],
    g: int,
    n: int,
    required: int,
    preferred: int | None,
) -> Choice | None:
    """The top-ranked candidate, or None when none fits."""
    cands = []
    for gpus in combinations(sorted(free_gpus), g):
        g_tier = gpu_set_tier(gg, gpus)
        if g_tier > required:
            continue
        for nics in combinations(sorted(free_nics), n):
            if gpus and nics:
                _, _, tier = _sides(gn, gpus, nics)
                bound = tuple(sorted((min(row) for row in tier), reverse=True))
            else:
                bound = ()
            worst = bound[0] if bound else 0
            if worst > required:
                continue
            out = preferred is not None and (g_tier > preferred or worst > preferred)
            cands.append(((out, g_tier, bound), gpus, nics))
    cands.sort()

    top: tuple[Score, tuple[int, ...], tuple[int, ...]] | None = None
    top_rails: tuple[tuple[int, int], ...] = ()
    for head_bound, gpus, nics in cands:
        if top is not None and head_bound > top[0][:3]:
            break  # sorted: every later candidate ranks below the best one already
        tiers, rails = best_rails(gn, gpus, nics)
        if tiers and tiers[0] > required:
            continue
        full = score(gg, gn, free_gpus, free_nics, gpus, nics, rails, preferred)
        if top is None or (full, gpus, nics) < top:
            top, top_rails = (full, gpus, nics), rails
    if top is None:
        return None
    return Choice(top[1], top[2], top_rails, top[0])


def _all_pairings(gpus: Sequence[int], nics: Sequence[int]) -> list[tuple[tuple[int, int], ...]]:
    if not gpus or not nics:
        return [()]
    out = []
    if len(gpus) >= len(nics):
        for partners in product(nics, repeat=len(gpus)):
            rails = tuple(sorted(zip(gpus, partners, strict=True)))
            if is_balanced(gpus, nics, rails):
                out.append(rails)
    else:
        for partners in product(gpus, repeat=len(nics)):
            rails = tuple(sorted(zip(partners, nics, strict=True)))
            if is_balanced(gpus, nics, rails):
                out.append(rails)
    return out


def naive_best(
    gg: Matrix,
    gn: Matrix,
    free_gpus: Sequence[int],
    free_nics: Sequence[int],
    g: int,
    n: int,
    required: int,
    preferred: int | None,
) -> Choice | None:
    """``best`` without pruning: every GPU set, NIC set and pairing. Small nodes only."""
    top: tuple[Score, tuple[int, ...], tuple[int, ...]] | None = None
    for gpus in combinations(sorted(free_gpus), g):
        for nics in combinations(sorted(free_nics), n):
            for rails in _all_pairings(gpus, nics):
                full = score(gg, gn, free_gpus, free_nics, gpus, nics, rails, preferred)
                if full[1] > required or (full[2] and full[2][0] > required):
                    continue
                if top is None or (full, gpus, nics) < top:
                    top = (full, gpus, nics)
    return None if top is None else Choice(top[1], top[2], (), top[0])
