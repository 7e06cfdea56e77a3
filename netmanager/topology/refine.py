"""Fold `nvidia-smi topo -m` into a sysfs-derived NodeTopology.

sysfs stays the authority for PCIe/NUMA tiers. nvidia-smi adds what sysfs cannot show (NVLink,
which overrides GPU-GPU tiers) and fills pairs that sysfs could only guess (unknown socket).
Disagreements are recorded in ``warnings`` rather than silently resolved.
"""

from __future__ import annotations

from .model import NodeTopology
from .nvidia_smi import SmiTopology, label_tier
from .tiers import Placed, Tier, tier_is_guess


def refine_with_smi(topology: NodeTopology, smi: SmiTopology) -> None:
    gpus = topology.gpus
    if smi.gpu_count != len(gpus):
        topology.warnings.append(
            f"nvidia-smi lists {smi.gpu_count} GPUs but sysfs has {len(gpus)}; nvidia-smi input ignored"
        )
        return
    topology.gpu_nvlinks = [[0 if i == j else smi.nvlinks(i, j) for j in range(len(gpus))] for i in range(len(gpus))]
    for i, a in enumerate(gpus):
        for j, b in enumerate(gpus):
            if i != j:
                pair = f"GPU{i}-GPU{j}"
                topology.gpu_gpu[i][j] = _merge(topology, pair, a, b, topology.gpu_gpu[i][j], smi.gpu_gpu[i][j])

    nic_by_rdma = {nic.rdma_device: k for k, nic in enumerate(topology.nics) if nic.rdma_device}
    unknown = [name for name in smi.nic_names if name not in nic_by_rdma]
    if unknown:
        topology.warnings.append(f"nvidia-smi NICs not found in sysfs: {', '.join(unknown)}")
    for column, name in enumerate(smi.nic_names):
        if name not in nic_by_rdma:
            continue
        k = nic_by_rdma[name]
        nic = topology.nics[k]
        for i, gpu in enumerate(gpus):
            pair = f"GPU{i}-{name}"
            topology.gpu_nic[i][k] = _merge(topology, pair, gpu, nic, topology.gpu_nic[i][k], smi.gpu_nic[i][column])


def _merge(topology: NodeTopology, pair: str, a: Placed, b: Placed, sysfs_tier: int, label: str) -> int:
    smi_tier = label_tier(label)
    if smi_tier is None:
        return sysfs_tier
    if smi_tier == Tier.NVLINK or tier_is_guess(a, b):
        return int(smi_tier)  # the model holds plain ints
    # SYS means "across NUMA nodes": sysfs may rightly say same socket (SNC / NPS modes).
    agrees = smi_tier == sysfs_tier or (label in ("SYS", "SOC") and sysfs_tier >= Tier.SAME_SOCKET)
    if not agrees:
        topology.warnings.append(
            f"{pair}: nvidia-smi says {label}, sysfs says {Tier(sysfs_tier).name}; keeping sysfs"
        )
    return sysfs_tier

