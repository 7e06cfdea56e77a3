"""The node topology published by the agent and consumed by the scheduler.

Plain pydantic v2 models only: the NodeTopology CRD schema is generated from them, so every field is
a JSON-schema-friendly scalar, list or dict. Python attribute names are snake_case; the JSON/CRD form
uses camelCase aliases (``model_dump(by_alias=True, mode="json")``); both spellings are accepted on
input.

Conventions:
- PCI addresses are full sysfs BDFs in lower case: ``0000:1b:00.0``.
- ``vendor`` / ``device_id`` are ``0x``-prefixed 4-digit lower-case hex: ``0x10de``, ``0x2330``.
- ``numa_node`` / ``socket`` are ``-1`` when the kernel does not know (single-node machines, VMs).
- ``pcie_path`` lists the PCI bridges above a device, root port first, nearest bridge last; the
  device itself is not included. Empty when the device hangs directly off the root complex.
- Matrix cells hold ``Tier`` values (ints). ``gpu_gpu[i][j]`` is indexed by ``Gpu.index``;
  ``gpu_nic[i][k]`` by ``Gpu.index`` and the position of the NIC in ``nics``.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from cni.spec.model import WireModel

from .tiers import Tier as Tier  # defined there (no pydantic) for the scheduler; re-exported


class _CamelModel(WireModel):
    model_config = ConfigDict(extra="ignore")  # the shared naming rule; unknown keys tolerated as before


class Gpu(_CamelModel):
    index: int = Field(description="Position in PCI bus order (nvidia-smi's GPU numbering).")
    pci_address: str
    vendor: str
    device_id: str
    model: str | None = Field(default=None, description="Marketing name when the device id is known.")
    numa_node: int
    socket: int
    pcie_path: list[str]
    root_complex: str = Field(default="", description="Host bridge directory, e.g. pci0000:17.")
    pcie_switch: str | None = Field(
        default=None, description="Upstream port of the top-level PCIe switch above the device, if any."
    )


class RdmaNic(_CamelModel):
    name: str = Field(description="Netdev name; the RDMA device name when the netdev is not visible.")
    rdma_device: str | None
    pci_address: str
    link_layer: str = Field(description='"Ethernet" (RoCE) or "InfiniBand".')
    speed_mbps: int | None
    numa_node: int
    socket: int
    pcie_path: list[str]
    is_vf: bool
    pf_pci_address: str | None
    vf_pci_addresses: list[str]
    vendor: str = ""
    device_id: str = ""
    root_complex: str = ""
    pcie_switch: str | None = None
    netdev_present: bool = Field(
        default=True, description="False when the netdev is not in the host namespace (e.g. a VF moved into a pod)."
    )
    sriov_total_vfs: int = 0
    sriov_num_vfs: int = 0


class NodeTopology(_CamelModel):
    node_name: str
    sockets: int
    numa_to_socket: dict[int, int]
    gpus: list[Gpu]
    nics: list[RdmaNic]
    gpu_gpu: list[list[int]] = Field(description="gpus x gpus Tier values, diagonal 0.")
    gpu_nic: list[list[int]] = Field(description="gpus x nics Tier values.")
    gpu_nvlinks: list[list[int]] = Field(
        default_factory=list,
        description="gpus x gpus NVLink counts from nvidia-smi (0 = none or unknown); empty when not given.",
    )
    warnings: list[str] = Field(default_factory=list, description="Inconsistencies noticed during discovery.")

    @model_validator(mode="after")
    def _check_matrix_shapes(self) -> NodeTopology:
        n_gpus, n_nics = len(self.gpus), len(self.nics)
        _check_matrix("gpu_gpu", self.gpu_gpu, n_gpus, n_gpus)
        _check_matrix("gpu_nic", self.gpu_nic, n_gpus, n_nics)
        if self.gpu_nvlinks:
            _check_matrix("gpu_nvlinks", self.gpu_nvlinks, n_gpus, n_gpus, tiers=False)
        return self

    def nearest_nics(self, gpu_index: int) -> list[int]:
        """Positions in ``nics`` of the NICs closest to the given GPU (ties all returned)."""
        row = self.gpu_nic[gpu_index]
        if not row:
            return []
        best = min(row)
        return [k for k, tier in enumerate(row) if tier == best]


def _check_matrix(name: str, matrix: list[list[int]], rows: int, cols: int, tiers: bool = True) -> None:
    if len(matrix) != rows or any(len(row) != cols for row in matrix):
        raise ValueError(f"{name} must be {rows}x{cols}")
    if tiers and any(not Tier.NVLINK <= cell <= Tier.CROSS_SOCKET for row in matrix for cell in row):
        raise ValueError(f"{name} holds a value outside Tier")
