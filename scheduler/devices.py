"""Device allocators for one pod on one chosen node: railnet's joint planner and two baselines.

* ``JointAllocator``: ``intranode.plan_devices`` (GPU set and NIC set chosen together).
* ``GpuAllocatorBaseline``: NVIDIA go-gpuallocator's best-effort policy, re-implemented from its
  source (gpuallocator/besteffort_policy.go): pair scores by link type, the best-scoring
  *partition* of the free GPUs into sets of the requested size, then that partition's best set.
  It knows nothing of NICs; each chosen GPU then takes its nearest free NIC, one by one
  (sequential, like Koordinator's joint allocation).
* ``FirstFitAllocator``: the lowest-numbered free GPUs (what a plain device plugin hands out),
  then nearest free NICs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Protocol

from scheduler.intranode import DeviceRequest, plan_devices
from scheduler.topology import CompactTopology, Tier, bits


@dataclass(frozen=True, slots=True)
class DeviceChoice:
    gpus: tuple[int, ...]
    nics: tuple[int, ...]
    rails: tuple[tuple[int, int], ...]


class DeviceAllocator(Protocol):
    name: str

    def choose(
        self, topo: CompactTopology, free_gpus: int, free_nics: int, request: DeviceRequest
    ) -> DeviceChoice | None: ...


class JointAllocator:
    name = "railnet"

    def choose(
        self, topo: CompactTopology, free_gpus: int, free_nics: int, request: DeviceRequest
    ) -> DeviceChoice | None:
        plan = plan_devices(topo, free_gpus, free_nics, request)
        return None if plan is None else DeviceChoice(plan.gpus, plan.nics, plan.rails)


def nearest_nics_in_turn(
    topo: CompactTopology, gpus: tuple[int, ...], free_nics: int, count: int
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]] | None:
    """GPU after GPU (round robin), each takes its nearest still-free NIC; no GPUs: lowest free NICs."""
    if count == 0:
        return (), ()
    free = bits(free_nics)
    if len(free) < count:
        return None
    if not gpus:
        return tuple(free[:count]), ()
    rails = []
    for slot in range(count):
        gpu = gpus[slot % len(gpus)]
        nic = min(free, key=lambda k: (topo.gpu_nic[gpu][k], k))
        free.remove(nic)
        rails.append((gpu, nic))
    for gpu in gpus[count:]:  # fewer NICs than GPUs: share the nearest chosen one
        nic = min((k for _, k in rails), key=lambda k: (topo.gpu_nic[gpu][k], k))
        rails.append((gpu, nic))
    return tuple(sorted({k for _, k in rails})), tuple(sorted(rails))


class FirstFitAllocator:
    name = "first-fit"

    def choose(
        self, topo: CompactTopology, free_gpus: int, free_nics: int, request: DeviceRequest
    ) -> DeviceChoice | None:
        free = bits(free_gpus)
        if len(free) < request.gpus:
            return None
        gpus = tuple(free[: request.gpus])
        nics = nearest_nics_in_turn(topo, gpus, free_nics, request.nics)
        return None if nics is None else DeviceChoice(gpus, nics[0], nics[1])


# go-gpuallocator link points (besteffort_policy.go calculateGPUPairScore) by our tiers.
LINK_POINTS = {
    Tier.NVLINK: 100,  # one NVLink (the tier does not carry the link count)
    Tier.SAME_SWITCH: 50,  # P2PLinkSingleSwitch
    Tier.SAME_ROOT: 30,  # P2PLinkHostBridge
    Tier.SAME_NUMA: 20,  # P2PLinkSameCPU
    Tier.SAME_SOCKET: 20,  # P2PLinkSameCPU (NVML reports NODE for this too)
    Tier.CROSS_SOCKET: 10,  # P2PLinkCrossCPU
}


def pair_score(topo: CompactTopology, a: int, b: int) -> int:
    return 0 if a == b else LINK_POINTS[Tier(topo.gpu_gpu[a][b])]


def set_score(topo: CompactTopology, gpus: tuple[int | None, ...]) -> int:
    real = [g for g in gpus if g is not None]
    return sum(pair_score(topo, a, b) for a, b in combinations(real, 2))


@lru_cache(maxsize=1 << 14)
def besteffort(topo: CompactTopology, free_gpus: int, size: int) -> tuple[int, ...] | None:
    """go-gpuallocator's bestEffortPolicy.Allocate with no required devices."""
    available: list[int | None] = list(bits(free_gpus))
    if size <= 0 or len(available) < size:
        return None
    if size == 1:  # every one-GPU partition scores 0: the first device wins
        return (int(available[0]),)  # type: ignore[arg-type]
    while len(available) % size:
        available.append(None)
    padding = available.count(None)
    best_partition: list[tuple[int | None, ...]] | None = None
    best_score = 0

    def visit(devices: list[int | None], accum: list[tuple[int | None, ...]]) -> None:
        nonlocal best_partition, best_score
        if len(devices) == size:
            partition = [*accum, tuple(devices)]
            if not any(s.count(None) == 0 for s in partition):
                return
            score = sum(set_score(topo, s) for s in partition)
            if best_partition is None or score > best_score:
                best_partition, best_score = partition, score
            return
        first, rest = devices[0], devices[1:]
        for others in combinations(rest, size - 1):
            group = (first, *others)
            pads = group.count(None)
            if pads not in (0, padding):
                continue
            remaining = list(rest)
            for item in others:
                remaining.remove(item)
            visit(remaining, [*accum, group])

    visit(available, [])
    if best_partition is None:
        return None
    sets = [s for s in best_partition if None not in s]
    best_set = sets[0]
    for candidate in sets[1:]:
        if set_score(topo, candidate) > set_score(topo, best_set):
            best_set = candidate
    return tuple(sorted(g for g in best_set if g is not None))


class GpuAllocatorBaseline:
    name = "go-gpuallocator"

    def choose(
        self, topo: CompactTopology, free_gpus: int, free_nics: int, request: DeviceRequest
    ) -> DeviceChoice | None:
        if request.gpus == 0:
            gpus: tuple[int, ...] = ()
        else:
            found = besteffort(topo, free_gpus, request.gpus)
            if found is None:
                return None
            gpus = found
        nics = nearest_nics_in_turn(topo, gpus, free_nics, request.nics)
        return None if nics is None else DeviceChoice(gpus, nics[0], nics[1])
