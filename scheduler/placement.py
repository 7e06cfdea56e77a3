"""One pod on one node: which GPUs, which share of a GPU, which NICs. Pure functions."""

from __future__ import annotations

from collections.abc import Callable

from scheduler.intranode import plan_devices
from scheduler.model import Allocation, Node, PodSpec
from scheduler.topology import bits

ShareChooser = Callable[[Node, PodSpec], "int | None"]


def best_fit_share(node: Node, pod: PodSpec) -> int | None:
    """The GPU with the least free share that still fits (packs onto partially used GPUs)."""
    best: int | None = None
    for gpu, free in enumerate(node.gpu_free_milli):
        if free >= pod.gpu_milli and (best is None or free < node.gpu_free_milli[best]):
            best = gpu
    return best


def nearest_free_nics(node: Node, gpu: int, count: int) -> tuple[int, ...] | None:
    """The ``count`` free NICs closest to one GPU (used for GPU-share pods that ask for RDMA)."""
    free = bits(node.nic_free)
    if len(free) < count:
        return None
    row = node.topology.gpu_nic[gpu]
    return tuple(sorted(sorted(free, key=lambda k: (row[k], k))[:count]))


def place_on_node(
    node: Node, pod: PodSpec, share_chooser: ShareChooser = best_fit_share, group: str = ""
) -> Allocation | None:
    """The allocation for ``pod`` on ``node`` in its current state, or None if it does not fit."""
    if not node.fits_host(pod):
        return None
    if pod.shares_gpu:
        gpu = share_chooser(node, pod)
        if gpu is None:
            return None
        nics: tuple[int, ...] = ()
        if pod.rdma_nics:
            found = nearest_free_nics(node, gpu, pod.rdma_nics)
            if found is None:
                return None
            nics = found
        rails = tuple((gpu, nic) for nic in nics)
        return Allocation(
            pod.name, node.index, pod.cpu_milli, pod.memory_mib, (gpu,), pod.gpu_milli, nics, rails, group
        )
    plan = plan_devices(node.topology, node.whole_free, node.nic_free, pod.device_request())
    if plan is None:
        return None
    milli = pod.gpu_milli if pod.num_gpu else 0
    return Allocation(
        pod.name, node.index, pod.cpu_milli, pod.memory_mib, plan.gpus, milli, plan.nics, plan.rails, group
    )
