"""Build a NodeTopology from a sysfs tree (and optionally `nvidia-smi topo -m` text)."""

from __future__ import annotations

import os
import platform

from .gpu import GPU_MODELS, find_gpus
from .model import Gpu, NodeTopology, RdmaNic
from .numa import CpuTopology, read_cpu_topology
from .nvidia_smi import parse_topo_matrix
from .pci import PciDevice, scan_pci
from .rdma import NicRecord, find_rdma_nics
from .refine import refine_with_smi
from .sysfs import Sysfs, TopologyError
from .tiers import Tier, pcie_tier


def discover(
    sysfs_root: str | os.PathLike[str] = "/sys",
    nvidia_smi_text: str | None = None,
    node_name: str | None = None,
    nvidia_smi_source: str = "nvidia-smi topo -m",
) -> NodeTopology:
    """Read the node's topology. Raises TopologyError (one line, naming the path) on bad input."""
    fs = Sysfs(sysfs_root)
    for required in (fs.path("bus", "pci", "devices"), fs.path("devices", "system", "cpu")):
        if not required.is_dir():
            raise TopologyError(f"{required} is missing: {fs.root} does not look like a sysfs tree")
    devices = scan_pci(fs)
    cpus = read_cpu_topology(fs)
    gpus = [_gpu(index, device, cpus) for index, device in enumerate(find_gpus(devices))]
    nics = [_nic(record, cpus) for record in find_rdma_nics(fs, devices)]

    topology = NodeTopology(
        node_name=node_name or os.environ.get("NODE_NAME") or platform.node(),
        sockets=cpus.sockets,
        numa_to_socket=cpus.numa_to_socket,
        gpus=gpus,
        nics=nics,
        gpu_gpu=[[Tier.NVLINK if a is b else pcie_tier(a, b) for b in gpus] for a in gpus],
        gpu_nic=[[pcie_tier(gpu, nic) for nic in nics] for gpu in gpus],
    )
    if nvidia_smi_text is not None:
        refine_with_smi(topology, parse_topo_matrix(nvidia_smi_text, nvidia_smi_source))
    return topology


def _gpu(index: int, device: PciDevice, cpus: CpuTopology) -> Gpu:
    numa = cpus.effective_numa(device.numa_node)
    return Gpu(
        index=index,
        pci_address=device.address,
        vendor=device.vendor,
        device_id=device.device_id,
        model=GPU_MODELS.get(device.device_id),
        numa_node=numa,
        socket=_socket(numa, cpus),
        pcie_path=list(device.bridges),
        root_complex=device.root_complex,
        pcie_switch=device.pcie_switch,
    )


def _nic(record: NicRecord, cpus: CpuTopology) -> RdmaNic:
    device = record.device
    numa = cpus.effective_numa(device.numa_node)
    return RdmaNic(
        name=record.netdev or record.rdma_device or device.address,
        rdma_device=record.rdma_device,
        pci_address=device.address,
        link_layer=record.link_layer,
        speed_mbps=record.speed_mbps,
        numa_node=numa,
        socket=_socket(numa, cpus),
        pcie_path=list(device.bridges),
        is_vf=device.is_vf,
        pf_pci_address=device.physfn,
        vf_pci_addresses=list(device.virtfns),
        vendor=device.vendor,
        device_id=device.device_id,
        root_complex=device.root_complex,
        pcie_switch=device.pcie_switch,
        netdev_present=record.netdev is not None,
        sriov_total_vfs=device.sriov_total_vfs,
        sriov_num_vfs=device.sriov_num_vfs,
    )


def _socket(numa: int, cpus: CpuTopology) -> int:
    if numa < 0 and cpus.sockets == 1:
        return next(iter(cpus.numa_to_socket.values()), 0)  # one package: the answer is known
    return cpus.socket_of(numa)
