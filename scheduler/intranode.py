"""Joint GPU + RDMA NIC choice on one node.

A pod asks ``g`` GPUs and ``n`` NICs. The GPU set and the NIC set are chosen together, by a total
order over candidates (smaller is better):

1. outside the preferred scope (False first), when the pod names one;
2. ``gpu_tier``: the worst pairwise GPU-GPU tier of the set;
3. the rails: every GPU is paired with a NIC of the set (balanced: with n <= g each NIC serves
   between 1 and ceil(g/n) GPUs; with n > g each GPU gets between 1 and ceil(n/g) NICs). Rails are
   compared by their tiers, worst first, so the bottleneck rail decides, then how many rails sit at
   it, and so on. Internally that order is the integer sum of ``B**tier`` with ``B`` larger than the
   number of rails;
4. the fragmentation left behind (``device_fragmentation``);
5. the GPU indices, then the NIC indices (lowest first), so the answer is deterministic.

A required scope drops candidates whose GPU tier or worst rail is beyond it.

Exact for nodes of up to 8 GPUs: every GPU set is enumerated (at most 70), candidates are visited in
order of a lower bound so most are never paired, and the pairing is an exact dynamic programme over
NIC loads. Results are memoised by (topology, free masks, request), so a steady-state decision is a
dictionary lookup. Larger nodes use a greedy heuristic (documented on ``_plan_greedy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

from scheduler.device_fragmentation import device_fragmentation
from scheduler.topology import TIER_COUNT, CompactTopology, Scope, bits, mask_of

EXACT_GPU_LIMIT = 8


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    gpus: int
    nics: int = 0
    required: Scope = Scope.ANY
    preferred: Scope | None = None

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.nics < 0:
            raise ValueError(f"device counts must be >= 0, got {self.gpus} GPUs and {self.nics} NICs")


@dataclass(frozen=True, slots=True)
class DevicePlan:
    gpus: tuple[int, ...]
    nics: tuple[int, ...]
    rails: tuple[tuple[int, int], ...]  # (gpu, nic) pairs
    gpu_tier: int
    rail_tiers: tuple[int, ...]  # one per rail, worst first
    in_preferred_scope: bool
    fragmentation: tuple[int, int]

    @property
    def gpu_mask(self) -> int:
        return mask_of(self.gpus)

    @property
    def nic_mask(self) -> int:
        return mask_of(self.nics)

    @property
    def worst_rail(self) -> int | None:
        return self.rail_tiers[0] if self.rail_tiers else None


def plan_devices(
    topo: CompactTopology, free_gpus: int, free_nics: int, request: DeviceRequest
) -> DevicePlan | None:
    """Best (GPU set, NIC set, rails) for the request on this node, or None if it does not fit."""
    preferred = -1 if request.preferred is None else int(request.preferred)
    return _plan_cached(
        topo, free_gpus, free_nics, request.gpus, request.nics, int(request.required), preferred
    )


@lru_cache(maxsize=1 << 18)
def _plan_cached(
    topo: CompactTopology, free_gpus: int, free_nics: int, g: int, n: int, required: int, preferred: int
) -> DevicePlan | None:
    free_gpus &= topo.all_gpus
    free_nics &= topo.all_nics
    if free_gpus.bit_count() < g or free_nics.bit_count() < n:
        return None
    if topo.n_gpus > EXACT_GPU_LIMIT:
        return _plan_greedy(topo, free_gpus, free_nics, g, n, required, preferred)
    return _plan_exact(topo, free_gpus, free_nics, g, n, required, preferred)


def rail_base(g: int, n: int) -> int:
    """Base of the rail cost: larger than the number of rails so counts never carry over."""
    return max(g, n) + 1


def worst_tier(cost: int, base: int) -> int:
    """Highest tier present in a rail cost (sum of base**tier); -1 for no rails."""
    for tier in range(TIER_COUNT - 1, -1, -1):
        if cost >= base**tier:
            return tier
    return -1


def _plan_exact(
    topo: CompactTopology, free_gpus: int, free_nics: int, g: int, n: int, required: int, preferred: int
) -> DevicePlan | None:
    base = rail_base(g, n)
    free_gpu_list = bits(free_gpus)
    free_nic_list = bits(free_nics)
    gn = topo.gpu_nic

    candidates: list[tuple[tuple[bool, int, int], tuple[int, ...], int]] = []
    for gset in combinations(free_gpu_list, g):
        gpu_tier = topo.gpu_set_tier(gset)
        if gpu_tier > required:
            continue
        bound = _rail_lower_bound(gn, gset, free_nic_list, n, base)
        out_lb = preferred >= 0 and (gpu_tier > preferred or worst_tier(bound, base) > preferred)
        candidates.append(((out_lb, gpu_tier, bound), gset, gpu_tier))
    candidates.sort(key=lambda c: c[0])

    best_head: tuple[bool, int, int] | None = None
    winners: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for head_lb, gset, gpu_tier in candidates:
        if best_head is not None and head_lb > best_head:
            break
        options = _rail_options(topo, mask_of(gset), free_nics, n)
        if options is None:
            continue
        cost, nic_masks = options
        rail_worst = worst_tier(cost, base)
        if rail_worst > required:
            continue
        out = preferred >= 0 and (gpu_tier > preferred or rail_worst > preferred)
        head = (out, gpu_tier, cost)
        if best_head is None or head < best_head:
            best_head, winners = head, [(gset, nm) for nm in nic_masks]
        elif head == best_head:
            winners.extend((gset, nm) for nm in nic_masks)
    if best_head is None:
        return None

    def order(
        w: tuple[tuple[int, ...], tuple[int, ...]],
    ) -> tuple[tuple[int, int], tuple[int, ...], tuple[int, ...]]:
        gset, nset = w
        left = device_fragmentation(topo, free_gpus & ~mask_of(gset), free_nics & ~mask_of(nset))
        return left, gset, nset

    gset, nset = min(winners, key=order)
    rails = lexmin_rails(topo, gset, nset)
    return _make_plan(topo, free_gpus, free_nics, gset, nset, rails, best_head[1], not best_head[0])


def _make_plan(
    topo: CompactTopology,
    free_gpus: int,
    free_nics: int,
    gset: tuple[int, ...],
    nset: tuple[int, ...],
    rails: tuple[tuple[int, int], ...],
    gpu_tier: int,
    in_preferred: bool,
) -> DevicePlan:
    tiers = tuple(sorted((topo.gpu_nic[i][k] for i, k in rails), reverse=True))
    left = device_fragmentation(topo, free_gpus & ~mask_of(gset), free_nics & ~mask_of(nset))
    return DevicePlan(gset, nset, rails, gpu_tier, tiers, in_preferred, left)


def _rail_lower_bound(
    gn: tuple[tuple[int, ...], ...], gset: tuple[int, ...], free_nics: list[int], n: int, base: int
) -> int:
    if n == 0 or not gset:
        return 0
    if n <= len(gset):
        return sum(base ** min(gn[i][k] for k in free_nics) for i in gset)
    per_nic = sorted(base ** min(gn[i][k] for i in gset) for k in free_nics)
    return sum(per_nic[:n])


@lru_cache(maxsize=1 << 16)
def _rail_options(
    topo: CompactTopology, gpu_mask: int, free_nics: int, n: int
) -> tuple[int, tuple[tuple[int, ...], ...]] | None:
    """Minimal rail cost for this GPU set and every NIC set (sorted index tuples) reaching it."""
    gset = bits(gpu_mask)
    g = len(gset)
    if n == 0:
        return 0, ((),)
    base = rail_base(g, n)
    nics = bits(free_nics)
    if g == 0:  # NICs alone: nothing to pair, any n of them
        return 0, tuple(combinations(nics, n))
    if n <= g:
        return _rails_gpu_major(topo.gpu_nic, gset, nics, n, base)
    best: int | None = None
    found: list[tuple[int, ...]] = []
    for nset in combinations(nics, n):
        cost = _assign_cost(topo.gpu_nic, gset, nset, base)
        if cost is None:
            continue
        if best is None or cost < best:
            best, found = cost, [nset]
        elif cost == best:
            found.append(nset)
    return None if best is None else (best, tuple(found))


def _rails_gpu_major(
    gn: tuple[tuple[int, ...], ...], gset: list[int], nics: list[int], n: int, base: int
) -> tuple[int, tuple[tuple[int, ...], ...]] | None:
    """n <= g: each GPU picks a NIC among all free ones; exactly n NICs end up used, each <= cap."""
    g = len(gset)
    cap = -(-g // n)
    m = len(nics)
    states: dict[tuple[int, ...], int] = {(0,) * m: 0}
    for step, i in enumerate(gset):
        remaining = g - step - 1
        row = gn[i]
        weights = [base ** row[k] for k in nics]
        nxt: dict[tuple[int, ...], int] = {}
        for state, cost in states.items():
            used = m - state.count(0)
            for pos in range(m):
                c = state[pos]
                if c >= cap or (c == 0 and used >= n):
                    continue
                new_used = used + (c == 0)
                if new_used + remaining < n:
                    continue
                new_state = state[:pos] + (c + 1,) + state[pos + 1 :]
                new_cost = cost + weights[pos]
                old = nxt.get(new_state)
                if old is None or new_cost < old:
                    nxt[new_state] = new_cost
        states = nxt
    finals = [(cost, state) for state, cost in states.items() if m - state.count(0) == n]
    if not finals:
        return None
    best = min(cost for cost, _ in finals)
    found = sorted({tuple(nics[p] for p in range(m) if state[p]) for cost, state in finals if cost == best})
    return best, tuple(found)


def _assign_cost(
    gn: tuple[tuple[int, ...], ...], gset: list[int] | tuple[int, ...], nset: tuple[int, ...], base: int
) -> int | None:
    """Minimal balanced rail cost between a fixed GPU set and a fixed NIC set."""
    table = _suffix_table(gn, tuple(gset), nset, base)
    return table[0].get(_start_state(len(gset), len(nset)))


def _start_state(g: int, n: int) -> tuple[int, ...]:
    return (0,) * min(g, n)


def _suffix_table(
    gn: tuple[tuple[int, ...], ...], gset: tuple[int, ...], nset: tuple[int, ...], base: int
) -> list[dict[tuple[int, ...], int]]:
    """best[step][loads]: cheapest way to pair the remaining items of the larger side.

    The larger side (GPUs when g >= n) is walked in index order; ``loads`` counts how many of its
    items each member of the smaller side already took (each must end between 1 and cap).
    """
    g, n = len(gset), len(nset)
    if g >= n:
        walk, small = gset, nset

        def weight(w: int, s: int) -> int:
            return int(base ** gn[w][s])
    else:
        walk, small = nset, gset

        def weight(w: int, s: int) -> int:
            return int(base ** gn[s][w])

    length, width = len(walk), len(small)
    cap = -(-length // width)
    table: list[dict[tuple[int, ...], int]] = [{} for _ in range(length + 1)]

    def solve(step: int, loads: tuple[int, ...]) -> int | None:
        memo = table[step]
        if loads in memo:
            return memo[loads]
        result: int | None
        if step == length:
            result = 0 if all(loads) else None
        else:
            missing = loads.count(0)
            if missing > length - step:
                result = None
            else:
                result = None
                item = walk[step]
                for pos in range(width):
                    if loads[pos] >= cap:
                        continue
                    rest = solve(step + 1, loads[:pos] + (loads[pos] + 1,) + loads[pos + 1 :])
                    if rest is None:
                        continue
                    total = rest + weight(item, small[pos])
                    if result is None or total < result:
                        result = total
        memo[loads] = result  # type: ignore[assignment]
        return result

    solve(0, (0,) * width)
    return table


def lexmin_rails(
    topo: CompactTopology, gset: tuple[int, ...], nset: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """The cheapest balanced pairing; among equals, the lexicographically smallest partner sequence.

    The sequence lists, for each item of the larger side in index order, the index of its partner.
    """
    g, n = len(gset), len(nset)
    if n == 0 or g == 0:
        return ()
    base = rail_base(g, n)
    table = _suffix_table(topo.gpu_nic, gset, nset, base)
    walk, small = (gset, nset) if g >= n else (nset, gset)
    loads = (0,) * len(small)
    pairs: list[tuple[int, int]] = []
    for step, item in enumerate(walk):
        target = table[step][loads]
        for pos in sorted(range(len(small)), key=lambda p: small[p]):
            nxt = loads[:pos] + (loads[pos] + 1,) + loads[pos + 1 :]
            rest = table[step + 1].get(nxt)
            if rest is None:
                continue
            partner = small[pos]
            tier = topo.gpu_nic[item][partner] if g >= n else topo.gpu_nic[partner][item]
            if rest + base**tier == target:
                pairs.append((item, partner) if g >= n else (partner, item))
                loads = nxt
                break
    return tuple(sorted(pairs))


def _plan_greedy(
    topo: CompactTopology, free_gpus: int, free_nics: int, g: int, n: int, required: int, preferred: int
) -> DevicePlan | None:
    """Nodes above 8 GPUs: grow a set from every free GPU, adding the closest GPU each time.

    Each seed gives one candidate; rails are then assigned NIC by NIC to the nearest free one.
    Candidates are compared with the same order as the exact search. Not exact, but O(g^2 * free).
    """
    free_list = bits(free_gpus)
    gg = topo.gpu_gpu
    best: tuple[tuple[object, ...], DevicePlan] | None = None
    for seed in free_list:
        chosen = [seed]
        pool = [i for i in free_list if i != seed]
        while len(chosen) < g:
            nxt = min(pool, key=lambda j: (max(gg[j][c] for c in chosen), sum(gg[j][c] for c in chosen), j))
            chosen.append(nxt)
            pool.remove(nxt)
        gset = tuple(sorted(chosen))
        gpu_tier = topo.gpu_set_tier(gset)
        if gpu_tier > required:
            continue
        nset, rails = _greedy_rails(topo, gset, free_nics, n)
        if len(nset) < n:
            continue
        tiers = tuple(sorted((topo.gpu_nic[i][k] for i, k in rails), reverse=True))
        if tiers and tiers[0] > required:
            continue
        out = preferred >= 0 and (gpu_tier > preferred or bool(tiers) and tiers[0] > preferred)
        left = device_fragmentation(topo, free_gpus & ~mask_of(gset), free_nics & ~mask_of(nset))
        key = (out, gpu_tier, tiers, left, gset)
        if best is None or key < best[0]:
            best = (key, DevicePlan(gset, nset, rails, gpu_tier, tiers, not out, left))
    return None if best is None else best[1]


def _greedy_rails(
    topo: CompactTopology, gset: tuple[int, ...], free_nics: int, n: int
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Distinct nearest free NICs for the first min(g, n) GPUs, round-robin; GPUs left over share."""
    if n == 0:
        return (), ()
    free = bits(free_nics)
    chosen: list[int] = []
    rails: list[tuple[int, int]] = []
    for slot in range(n):
        if not free:
            break
        gpu = gset[slot % len(gset)]
        nic = min(free, key=lambda k: (topo.gpu_nic[gpu][k], k))
        free.remove(nic)
        chosen.append(nic)
        rails.append((gpu, nic))
    if chosen:
        for gpu in gset[len(chosen) :]:
            rails.append((gpu, min(chosen, key=lambda k: (topo.gpu_nic[gpu][k], k))))
    return tuple(sorted(chosen)), tuple(sorted(rails))
