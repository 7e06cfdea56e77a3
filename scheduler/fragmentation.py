"""FGD's GPU fragmentation measure (Weng et al., USENIX ATC 2023), written from its simulator.

The *target workload* is the set of most common pod shapes ``m`` = (CPU, GPU milli per GPU, GPU
count, GPU model constraint) with frequencies ``p_m`` (``typical_shapes``: most frequent first,
until 95 % of pods are covered, CPU-only pods included, then renormalised; the settings of the
published runs).

A node's fragmentation is ``F = sum_m p_m * unusable_m``, with ``unusable_m`` the free GPU milli
that shape ``m`` cannot use there: all of it if ``m`` does not fit at all (not enough GPUs with
enough free milli, not enough CPU, wrong model, or ``m`` needs no GPU), otherwise only the free
milli of GPUs whose free share is below what ``m`` needs per GPU. FGD places a pod where ``F``
drops most.

``fits_memory`` is a railnet extension (off for the faithful FGD): a shape that does not fit in
the node's free memory cannot use its GPUs either.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scheduler.model import PodSpec

POPULARITY_THRESHOLD = 0.95


@dataclass(frozen=True, slots=True)
class Shape:
    cpu_milli: int
    gpu_milli: int  # per GPU, 0 for CPU-only pods
    num_gpu: int
    models: frozenset[str]
    memory_mib: int = 0

    @classmethod
    def of(cls, pod: PodSpec, with_memory: bool = False) -> Shape:
        return cls(
            pod.cpu_milli, pod.gpu_milli, pod.num_gpu, pod.gpu_models, pod.memory_mib if with_memory else 0
        )


def typical_shapes(
    pods: Iterable[PodSpec],
    threshold: float = POPULARITY_THRESHOLD,
    with_memory: bool = False,
    by_gpu_demand: bool = False,
) -> list[tuple[Shape, float]]:
    """Most frequent pod shapes covering ``threshold`` of all pods, frequencies renormalised.

    ``by_gpu_demand`` weighs each pod by the GPU milli it asks instead of counting pods once (a
    railnet option: the objective is allocated GPUs, not placed pods).
    """
    counts: Counter[Shape] = Counter()
    for pod in pods:
        counts[Shape.of(pod, with_memory)] += pod.total_gpu_milli if by_gpu_demand else 1
    return typical_from_counts(counts, threshold)


def typical_from_counts(
    counts: Mapping[Shape, int], threshold: float = POPULARITY_THRESHOLD
) -> list[tuple[Shape, float]]:
    """``typical_shapes`` from shape counts (lets a policy keep counts of the pods seen so far)."""
    total = sum(counts.values())
    ranked = sorted(
        counts.items(),
        key=lambda kv: (kv[1], kv[0].cpu_milli, kv[0].gpu_milli, kv[0].num_gpu, sorted(kv[0].models)),
        reverse=True,
    )
    chosen: list[tuple[Shape, int]] = []
    covered = 0
    for shape, count in ranked:
        if covered >= threshold * total:
            break
        chosen.append((shape, count))
        covered += count
    return [(shape, count / covered) for shape, count in chosen]


class FragmentationModel:
    """Fragmentation of node states against a target workload; cached per distinct state."""

    def __init__(self, typical: list[tuple[Shape, float]], fits_memory: bool = False) -> None:
        self.typical = typical
        self.fits_memory = fits_memory
        self._cache: dict[tuple[object, ...], float] = {}

    def node_fragmentation(
        self, model: str, cpu_free: int, memory_free: int, gpu_free: tuple[int, ...]
    ) -> float:
        """``F`` for a node whose free GPU milli are ``gpu_free`` (sorted ascending)."""
        key = (model, cpu_free, memory_free if self.fits_memory else 0, gpu_free)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        total = sum(gpu_free)
        frag = 0.0
        if total:
            for shape, p in self.typical:
                frag += p * self._unusable(shape, model, cpu_free, memory_free, gpu_free, total)
        self._cache[key] = frag
        return frag

    def _unusable(
        self, shape: Shape, model: str, cpu_free: int, memory_free: int, gpu_free: tuple[int, ...], total: int
    ) -> int:
        if shape.num_gpu == 0:
            return total  # a CPU-only pod leaves every free GPU idle
        if shape.models and model not in shape.models:
            return total
        if shape.cpu_milli > cpu_free or (self.fits_memory and shape.memory_mib > memory_free):
            return total
        below = bisect_left(gpu_free, shape.gpu_milli)  # GPUs too full for this shape
        if len(gpu_free) - below < shape.num_gpu:
            return total
        return sum(gpu_free[:below])
