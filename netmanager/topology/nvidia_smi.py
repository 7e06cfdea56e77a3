"""Parser for the text of ``nvidia-smi topo -m``.

The matrix is tab-separated: a header row of device columns (``GPU0``.., then ``NIC0``.. or, on
older drivers, RDMA device names such as ``mlx5_0``), followed by ``CPU Affinity``, ``NUMA
Affinity``, ...; one row per device; then a legend, and on newer drivers a ``NIC Legend`` mapping
``NIC0: mlx5_0``. Only the GPU rows are needed: GPU-GPU and GPU-NIC cells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .sysfs import TopologyError
from .tiers import Tier

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
GPU_RE = re.compile(r"^GPU(\d+)$")
NIC_LEGEND_RE = re.compile(r"^\s*(NIC\d+)\s*:\s*(\S+)\s*$")
NVLINK_RE = re.compile(r"^NV(\d+)$")

# nvidia-smi label -> closest Tier it guarantees. SYS only says "across NUMA nodes", which may still
# be the same socket; callers treat it as a lower bound (see label_tier).
LABEL_TIERS: dict[str, Tier] = {
    "PIX": Tier.SAME_SWITCH,
    "PXB": Tier.SAME_SWITCH,
    "PHB": Tier.SAME_ROOT,
    "NODE": Tier.SAME_NUMA,
    "SYS": Tier.CROSS_SOCKET,
    "SOC": Tier.CROSS_SOCKET,  # pre-2017 drivers' name for SYS
}


@dataclass
class SmiTopology:
    gpu_count: int
    nic_names: list[str]  # RDMA device names, in column order
    gpu_gpu: list[list[str]]  # raw labels, "X" on the diagonal
    gpu_nic: list[list[str]]

    def nvlinks(self, i: int, j: int) -> int:
        match = NVLINK_RE.match(self.gpu_gpu[i][j])
        return int(match.group(1)) if match else 0


def label_tier(label: str) -> Tier | None:
    """Tier for a cell label; None for X and for labels this parser does not know."""
    if NVLINK_RE.match(label):
        return Tier.NVLINK
    return LABEL_TIERS.get(label)


def parse_topo_matrix(text: str, source: str = "nvidia-smi topo -m") -> SmiTopology:
    lines = [ANSI_RE.sub("", line).rstrip() for line in text.splitlines()]
    header_at = next((i for i, line in enumerate(lines) if re.match(r"^\s+GPU0(\s|$)", line)), None)
    if header_at is None:
        raise TopologyError(f"{source}: no matrix header starting with GPU0 found")
    columns = _header_columns(lines[header_at])
    rows: dict[str, list[str]] = {}
    for line in lines[header_at + 1 :]:
        if not line.strip():
            break  # the matrix ends at the first blank line, before the legend
        tokens = line.split()
        rows[tokens[0]] = tokens[1 : 1 + len(columns)]
    legend = {m.group(1): m.group(2) for line in lines if (m := NIC_LEGEND_RE.match(line))}

    gpu_cols = [c for c in columns if GPU_RE.match(c)]
    nic_cols = [c for c in columns if not GPU_RE.match(c)]
    if gpu_cols != [f"GPU{i}" for i in range(len(gpu_cols))]:
        raise TopologyError(f"{source}: GPU columns are not GPU0..GPU{len(gpu_cols) - 1}")
    for col in gpu_cols:
        if len(rows.get(col, [])) != len(columns):
            raise TopologyError(f"{source}: row {col} is missing or has fewer than {len(columns)} cells")

    index = {c: k for k, c in enumerate(columns)}
    return SmiTopology(
        gpu_count=len(gpu_cols),
        nic_names=[legend.get(c, c) for c in nic_cols],
        gpu_gpu=[[rows[g][index[h]] for h in gpu_cols] for g in gpu_cols],
        gpu_nic=[[rows[g][index[n]] for n in nic_cols] for g in gpu_cols],
    )


def _header_columns(header: str) -> list[str]:
    """Device columns: header tokens before ``CPU Affinity`` (device names never contain spaces)."""
    columns: list[str] = []
    for token in header.split():
        if token in ("CPU", "NUMA", "GPU") or "Affinity" in token:
            break
        columns.append(token)
    return columns
