"""The ``railnet.io/allocation`` annotation: which GPUs and RDMA NICs a pod got, and how they pair.

Written in the same API call that binds the pod (the Binding's annotations are copied onto the
pod by the API server), so a pod is never bound without it nor annotated without being bound.
Read back by the scheduler's cache after a restart or a leader change, and by the device plugin /
CNI side on the node. Schema: docs/allocation.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from scheduler.model import Allocation
from scheduler.topology import Tier

VERSION = 1


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class GpuRef(_Wire):
    index: int = Field(description="GPU index on the node (NodeTopology order = nvidia-smi order).")
    pci_address: str | None = None
    model: str | None = None


class NicRef(_Wire):
    index: int = Field(description="Index into the node's NodeTopology nics list.")
    name: str | None = Field(default=None, description="Netdev name on the node.")
    pci_address: str | None = None
    rdma_device: str | None = None


class Rail(_Wire):
    rail: int = Field(description="Rail number inside the pod: 0..len(rails)-1, in GPU order.")
    gpu: int
    nic: int
    tier: int = Field(description="PCIe/NUMA distance GPU->NIC: 1 same switch ... 5 cross socket.")
    tier_name: str


class PodAllocation(_Wire):
    """One pod's devices on its node."""

    version: int = VERSION
    node: str
    topology_known: bool = Field(description="False: the node has no NodeTopology; indices only.")
    gpus: list[GpuRef] = Field(default_factory=list)
    nics: list[NicRef] = Field(default_factory=list)
    rails: list[Rail] = Field(default_factory=list)
    group: str | None = Field(default=None, description="Gang (namespace/name) the pod was planned with.")

    def to_annotation(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    @classmethod
    def from_annotation(cls, text: str) -> PodAllocation:
        return cls.model_validate_json(text)


def build(alloc: Allocation, node: str, topology: Mapping[str, Any] | None, gang: str | None = None) -> PodAllocation:
    """The annotation for a core ``Allocation``; ``topology`` is the node's NodeTopology spec (or None)."""
    gpus_info = (topology or {}).get("gpus") or []
    nics_info = (topology or {}).get("nics") or []
    gpu_nic = (topology or {}).get("gpuNic") or []
    gpus = [
        GpuRef(index=g, pci_address=_at(gpus_info, g, "pciAddress"), model=_at(gpus_info, g, "model"))
        for g in alloc.gpus
    ]
    nics = [
        NicRef(index=n, name=_at(nics_info, n, "name"), pci_address=_at(nics_info, n, "pciAddress"),
               rdma_device=_at(nics_info, n, "rdmaDevice"))
        for n in alloc.nics
    ]
    rails = []
    for number, (gpu, nic) in enumerate(sorted(alloc.rails)):
        tier = gpu_nic[gpu][nic] if gpu < len(gpu_nic) and nic < len(gpu_nic[gpu]) else int(Tier.CROSS_SOCKET)
        rails.append(Rail(rail=number, gpu=gpu, nic=nic, tier=tier, tier_name=Tier(tier).name))
    return PodAllocation(node=node, topology_known=topology is not None, gpus=gpus, nics=nics, rails=rails,
                         group=gang)


def _at(items: list[Any], index: int, key: str) -> Any:
    return items[index].get(key) if 0 <= index < len(items) else None
