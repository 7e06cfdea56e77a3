"""Why a pod or a gang does not fit, in words an operator can act on (the events' messages)."""

from __future__ import annotations

from collections.abc import Mapping

from scheduler.gang import Gang, plan_gang
from scheduler.model import PodSpec
from scheduler.view import ClusterView


def pod_reason(view: ClusterView, pod: PodSpec, blocked: list[int], reasons: Mapping[str, int],
               gpu: str = "nvidia.com/gpu", rdma: str = "rdma/roce") -> str:
    """The first thing that rules every usable node out, checked from capacity to free devices."""
    cluster = view.cluster
    excluded = set(blocked)
    usable = [n for n in cluster.nodes if n.index not in excluded]
    tail = ""
    if reasons:
        tail = "; excluded: " + ", ".join(f"{count} by {why}" for why, count in sorted(reasons.items()))
    if not usable:
        return f"no usable node ({len(cluster.nodes)} nodes{tail})"
    most_gpus = max(n.gpu_count for n in usable)
    if pod.num_gpu > most_gpus:
        return f"no node has {pod.num_gpu} {gpu} (the largest has {most_gpus}){tail}"
    most_nics = max(n.nic_count for n in usable)
    if pod.rdma_nics > most_nics:
        return f"no node has {pod.rdma_nics} {rdma} (the largest has {most_nics}){tail}"
    states = [view.node(n.index) for n in usable]
    free_gpus = max(s.whole_free.bit_count() for s in states)
    if pod.num_gpu > free_gpus:
        return f"no node has {pod.num_gpu} free {gpu} (most free on one node: {free_gpus}){tail}"
    free_nics = max(s.nic_free.bit_count() for s in states if s.whole_free.bit_count() >= pod.num_gpu)
    if pod.rdma_nics > free_nics:
        return f"no node with {pod.num_gpu} free {gpu} has {pod.rdma_nics} free {rdma}{tail}"
    if not any(s.fits_host(pod) for s in states):
        return f"no node has {pod.cpu_milli}m CPU and {pod.memory_mib}Mi memory free next to the devices{tail}"
    return f"no node can pair {pod.num_gpu} GPUs with {pod.rdma_nics} NICs as required{tail}"


def gang_reason(view: ClusterView, gang: Gang, blocked: list[int], reasons: Mapping[str, int],
                gpu: str = "nvidia.com/gpu", rdma: str = "rdma/roce") -> str:
    """"gang g: k of n members fit; member m: <why>" from a scratch plan that places as many as it can."""
    trial = view.child()
    partial = plan_gang(trial, Gang(gang.name, gang.members, 1, gang.priority, gang.max_level))
    fit = len(partial.allocations) if partial else 0
    placed = {a.pod for a in partial.allocations} if partial else set()
    first_out = next(m for m in gang.members if m.name not in placed) if fit < len(gang.members) else None
    head = f"gang {gang.name}: {fit} of {gang.need} members fit"
    if first_out is None:
        return head
    return f"{head}; member {first_out.name}: {pod_reason(trial, first_out, blocked, reasons, gpu, rdma)}"
