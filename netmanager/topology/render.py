"""Human-readable rendering of a NodeTopology: nvidia-smi-style matrices plus a device list."""

from __future__ import annotations

from .model import Gpu, NodeTopology, RdmaNic
from .tiers import Placed, Tier, is_single_switch

LEGEND = (
    "Legend: X = self, NV# = NVLink (# links), PIX = same PCIe switch, PXB = nested PCIe switches, "
    "PHB = same root complex, NODE = same NUMA node, SKT = same socket (other NUMA node), "
    "SYS = across sockets"
)
_TIER_LABELS = {Tier.SAME_ROOT: "PHB", Tier.SAME_NUMA: "NODE", Tier.SAME_SOCKET: "SKT", Tier.CROSS_SOCKET: "SYS"}


def tier_label(tier: int, a: Placed | None = None, b: Placed | None = None, nvlinks: int = 0) -> str:
    """nvidia-smi-like label; PIX vs PXB needs the two devices' PCIe paths."""
    if tier == Tier.NVLINK:
        return f"NV{nvlinks}" if nvlinks else "NV"
    if tier == Tier.SAME_SWITCH:
        return "PXB" if a is not None and b is not None and not is_single_switch(a, b) else "PIX"
    return _TIER_LABELS[Tier(tier)]


def render(topology: NodeTopology) -> str:
    lines = [
        f"Node {topology.node_name}: {topology.sockets} socket(s), "
        f"NUMA->socket {_numa_map(topology)}, {len(topology.gpus)} GPU(s), {len(topology.nics)} RDMA NIC(s)",
        "",
    ]
    lines += _matrix(topology)
    lines += ["", LEGEND, "", "GPUs:"]
    lines += _table([_gpu_fields(gpu) for gpu in topology.gpus]) or ["  (none)"]
    lines += ["", "RDMA NICs:"]
    lines += _table([_nic_fields(topology, k, nic) for k, nic in enumerate(topology.nics)]) or ["  (none)"]
    if topology.warnings:
        lines += ["", "Warnings:"] + [f"  {warning}" for warning in topology.warnings]
    return "\n".join(lines) + "\n"


def _matrix(topology: NodeTopology) -> list[str]:
    gpus, nics = topology.gpus, topology.nics
    if not gpus:
        return ["(no GPUs: nothing to place NICs against)"]
    columns = [f"GPU{g.index}" for g in gpus] + [f"NIC{k}" for k in range(len(nics))] + ["NUMA", "Socket"]
    rows: list[list[str]] = []
    for i, gpu in enumerate(gpus):
        cells = [
            "X" if i == j else tier_label(topology.gpu_gpu[i][j], gpu, other, _nvlinks(topology, i, j))
            for j, other in enumerate(gpus)
        ]
        cells += [tier_label(topology.gpu_nic[i][k], gpu, nic) for k, nic in enumerate(nics)]
        rows.append([f"GPU{gpu.index}", *cells, _num(gpu.numa_node), _num(gpu.socket)])
    width = max(len(cell) for row in rows for cell in row[1:] + columns) + 2
    header = " " * 6 + "".join(c.center(width) for c in columns)
    return [header.rstrip()] + [(row[0].ljust(6) + "".join(c.center(width) for c in row[1:])).rstrip() for row in rows]


def _table(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, indented by two."""
    if not rows:
        return []
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _gpu_fields(gpu: Gpu) -> list[str]:
    return [
        f"GPU{gpu.index}",
        gpu.pci_address,
        gpu.model or "unknown model",
        f"{gpu.vendor}:{gpu.device_id}",
        f"NUMA {_num(gpu.numa_node)}",
        f"socket {_num(gpu.socket)}",
        f"path {_path(gpu.pcie_path, gpu.root_complex)}",
    ]


def _nic_fields(topology: NodeTopology, k: int, nic: RdmaNic) -> list[str]:
    if nic.is_vf:
        role = f"VF of {nic.pf_pci_address}"
    elif nic.vf_pci_addresses:
        role = f"PF, {len(nic.vf_pci_addresses)}/{nic.sriov_total_vfs} VFs"
    else:
        role = "PF"
    nearest = [f"GPU{gpu.index}" for i, gpu in enumerate(topology.gpus) if k in topology.nearest_nics(i)]
    return [
        f"NIC{k}",
        nic.name if nic.netdev_present else f"{nic.name} (netdev not in host ns)",
        nic.rdma_device or "(no RDMA device)",
        nic.pci_address,
        nic.link_layer,
        f"{nic.speed_mbps // 1000} Gb/s" if nic.speed_mbps else "speed ?",
        role,
        f"NUMA {_num(nic.numa_node)}",
        f"socket {_num(nic.socket)}",
        f"nearest to {', '.join(nearest) or '-'}",
    ]


def _nvlinks(topology: NodeTopology, i: int, j: int) -> int:
    return topology.gpu_nvlinks[i][j] if topology.gpu_nvlinks else 0


def _path(path: list[str], root_complex: str) -> str:
    return " > ".join([root_complex or "?", *path])


def _num(value: int) -> str:
    return "?" if value < 0 else str(value)


def _numa_map(topology: NodeTopology) -> str:
    return "{" + ", ".join(f"{n}: {s}" for n, s in sorted(topology.numa_to_socket.items())) + "}"
