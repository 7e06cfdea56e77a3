"""Pairwise distance (Tier) between two placed devices, from PCIe tree + NUMA + socket.

``Tier`` is defined here, once, for the agent and the scheduler. This module imports nothing but
the standard library (no pydantic), so the scheduler can import it on its hot paths.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Protocol


class Tier(IntEnum):
    """Distance between two devices; smaller is closer."""

    NVLINK = 0  # direct NVLink/NVSwitch (only known from `nvidia-smi topo -m`)
    SAME_SWITCH = 1  # nearest common upstream bridge is a PCIe switch port (nvidia-smi PIX/PXB)
    SAME_ROOT = 2  # same root port or root complex / host bridge (PHB)
    SAME_NUMA = 3  # different host bridges, same NUMA node (NODE)
    SAME_SOCKET = 4  # different NUMA nodes of one CPU package (SNC/NPS modes)
    CROSS_SOCKET = 5  # across the inter-socket link (SYS), or unknown


class Placed(Protocol):
    """Anything with a position in the machine: ``Gpu`` and ``RdmaNic`` both qualify."""

    @property
    def root_complex(self) -> str: ...
    @property
    def pcie_path(self) -> list[str]: ...
    @property
    def numa_node(self) -> int: ...
    @property
    def socket(self) -> int: ...


def common_bridges(a: Placed, b: Placed) -> int:
    """How many upstream bridges two devices share (0 when on different root complexes)."""
    if not a.root_complex or a.root_complex != b.root_complex:
        return 0
    shared = 0
    for left, right in zip(a.pcie_path, b.pcie_path, strict=False):
        if left != right:
            break
        shared += 1
    return shared


def pcie_tier(a: Placed, b: Placed) -> Tier:
    """Closest tier two devices share; unknown NUMA/socket falls through to CROSS_SOCKET."""
    if a.root_complex and a.root_complex == b.root_complex:
        # pcie_path[0] is the root port; a shared entry below it is a switch port.
        return Tier.SAME_SWITCH if common_bridges(a, b) >= 2 else Tier.SAME_ROOT
    if a.numa_node >= 0 and a.numa_node == b.numa_node:
        return Tier.SAME_NUMA
    if a.socket >= 0 and a.socket == b.socket:
        return Tier.SAME_SOCKET
    return Tier.CROSS_SOCKET


def tier_is_guess(a: Placed, b: Placed) -> bool:
    """True when pcie_tier fell back to CROSS_SOCKET only because a socket is unknown."""
    return pcie_tier(a, b) == Tier.CROSS_SOCKET and (a.socket < 0 or b.socket < 0)


def is_single_switch(a: Placed, b: Placed) -> bool:
    """nvidia-smi's PIX (vs PXB): below the shared bridges neither device crosses another switch.

    Paths alternate root port, then per switch an upstream port (odd index) and a downstream port
    (even index); crossing an upstream port below the shared part means a second switch.
    """
    shared = common_bridges(a, b)
    return all(i % 2 == 0 for path in (a.pcie_path, b.pcie_path) for i in range(shared, len(path)))
