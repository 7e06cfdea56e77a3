"""Four real-world server layouts as ``Server`` specs (see fixture_spec / fixtures).

Each is modelled on a common machine class, not copied from one vendor's board: bus numbers,
device ids and names are realistic, and the tier structure is what matters.
"""

from __future__ import annotations

from collections.abc import Callable

from .fixture_spec import (
    AMD,
    CLASS_BRIDGE_OTHER,
    CLASS_ETHERNET,
    CLASS_NVME,
    INTEL,
    NVIDIA,
    Device,
    Gpu,
    HostBridge,
    Nic,
    RootPort,
    Server,
    Switch,
)

H100_SXM = 0x2330
A100_SXM4_80GB = 0x20B2
A100_PCIE_80GB = 0x20B5
CONNECTX_7 = 0x1021
CONNECTX_6 = 0x101B
CONNECTX_6_DX = 0x101D
NVSWITCH_A100 = 0x1AF1
PEX88000 = 0xC010


def _nvme() -> Device:
    return Device(vendor=0x144D, device_id=0xA80A, pci_class=CLASS_NVME)  # Samsung PM9A3


def _management_nic() -> Device:
    return Device(vendor=INTEL, device_id=0x1521, pci_class=CLASS_ETHERNET, netdev="eno1")  # I350, no RDMA


def hgx_h100() -> Server:
    """8x H100 SXM + 8x ConnectX-7 400G RoCE, two Sapphire Rapids sockets (one NUMA node each).

    Each GPU shares a PCIe switch with one NIC (and on some, an NVMe drive); each switch hangs off
    its own host bridge, four per socket, so a GPU's other same-socket NICs are NODE away.
    """
    buses = [(0, 0x15), (0, 0x37), (0, 0x48), (0, 0x59), (1, 0x97), (1, 0xB8), (1, 0xC9), (1, 0xDA)]
    bridges = [HostBridge(numa=0, bus=0x00, ports=[RootPort(_management_nic())])]
    for slot, (numa, bus) in enumerate(buses):
        members: list[Gpu | Nic | Device] = [Gpu(device_id=H100_SXM), Nic(device_id=CONNECTX_7, speed_gbps=400)]
        if slot % 2 == 0:
            members.append(_nvme())
        bridges.append(HostBridge(numa=numa, bus=bus, ports=[RootPort(Switch(*members))]))
    return Server(
        name="hgx-h100",
        sockets=2,
        numa_per_socket=1,
        cores_per_numa=56,
        host_bridges=bridges,
        nvlinks=18,
        notes=["GPU i pairs with NIC i under one PCIe switch; GPU0-3 + NIC0-3 on socket 0, 4-7 on socket 1"],
    )


def hgx_a100() -> Server:
    """DGX A100-style: 8x A100 SXM4, 8x ConnectX-6 HDR InfiniBand for compute, a dual-port
    ConnectX-6 for storage, 6 NVSwitches visible on PCIe, two AMD EPYC sockets in NPS4 (8 NUMA
    nodes). Four switch complexes, each a top switch with two second-level switches holding one GPU
    and one NIC each, so every GPU has two NICs behind its top switch; the complexes sit on NUMA
    nodes 3, 1, 7, 5, so GPU0-GPU2 are the same socket but different NUMA nodes.
    """

    def complex_(numa: int, bus: int) -> HostBridge:
        pair = [Switch(Gpu(device_id=A100_SXM4_80GB), _ib_nic(), device_id=PEX88000) for _ in range(2)]
        return HostBridge(numa=numa, bus=bus, ports=[RootPort(Switch(*pair, device_id=PEX88000), vendor=AMD, device_id=0x1483)])

    storage = Nic(device_id=CONNECTX_6, link_layer="Ethernet", speed_gbps=200, functions=2)
    nvswitches = [Device(vendor=NVIDIA, device_id=NVSWITCH_A100, pci_class=CLASS_BRIDGE_OTHER) for _ in range(6)]
    return Server(
        name="hgx-a100",
        sockets=2,
        numa_per_socket=4,
        cores_per_numa=16,
        cpu_vendor=AMD,
        host_bridges=[
            complex_(3, 0x00),
            HostBridge(numa=2, bus=0x20, ports=[RootPort(_management_nic(), vendor=AMD, device_id=0x1483)]),
            complex_(1, 0x40),
            HostBridge(numa=0, bus=0x60, ports=[RootPort(storage, vendor=AMD, device_id=0x1483)]),
            complex_(7, 0x80),
            complex_(5, 0xA0),
            HostBridge(numa=6, bus=0xC0, ports=[RootPort(Switch(*nvswitches, device_id=PEX88000), vendor=AMD, device_id=0x1483)]),
        ],
        nvlinks=12,
        notes=["compute NICs mlx5_0-3 and mlx5_6-9 (InfiniBand), storage mlx5_4-5 (Ethernet)"],
    )


def _ib_nic() -> Nic:
    return Nic(device_id=CONNECTX_6, link_layer="InfiniBand", speed_gbps=200)


def pcie_4gpu() -> Server:
    """4x A100 PCIe + 2x ConnectX-6 Dx 100G on a two-socket Intel server, no PCIe switches: every
    GPU and NIC sits directly on a CPU root port."""
    return Server(
        name="pcie-4gpu",
        sockets=2,
        numa_per_socket=1,
        cores_per_numa=32,
        host_bridges=[
            HostBridge(numa=0, bus=0x00, ports=[RootPort(_management_nic())]),
            HostBridge(numa=0, bus=0x17, ports=[RootPort(Gpu(device_id=A100_PCIE_80GB)), RootPort(Gpu(device_id=A100_PCIE_80GB))]),
            HostBridge(numa=0, bus=0x3A, ports=[RootPort(Nic(device_id=CONNECTX_6_DX, speed_gbps=100))]),
            HostBridge(numa=1, bus=0x85, ports=[RootPort(Gpu(device_id=A100_PCIE_80GB))]),
            HostBridge(
                numa=1,
                bus=0x9A,
                ports=[RootPort(Gpu(device_id=A100_PCIE_80GB)), RootPort(Nic(device_id=CONNECTX_6_DX, speed_gbps=100))],
            ),
        ],
        notes=["GPU0/GPU1 share a root complex (PHB); NIC0 is NODE away from them; GPU3 and NIC1 share one"],
    )


def sriov() -> Server:
    """Two ConnectX-6 Dx 100G PFs with 4 VFs each, every VF with its own RDMA device.

    PF0 (socket 0) shares a PCIe switch with GPU0; one of its VFs has been moved into a pod, so its
    netdev is gone from the host. PF1 (socket 1) is in switchdev mode: the host also sees one
    representor netdev per VF on the PF's PCI device.
    """
    pf0 = Nic(device_id=CONNECTX_6_DX, speed_gbps=100, vfs=4, vfs_in_pods=(1,))
    pf1 = Nic(device_id=CONNECTX_6_DX, speed_gbps=100, vfs=4, switchdev=True)
    return Server(
        name="sriov",
        sockets=2,
        numa_per_socket=1,
        cores_per_numa=16,
        host_bridges=[
            HostBridge(numa=0, bus=0x00, ports=[RootPort(_management_nic())]),
            HostBridge(numa=0, bus=0x17, ports=[RootPort(Switch(Gpu(device_id=A100_PCIE_80GB), pf0, device_id=PEX88000))]),
            HostBridge(numa=1, bus=0x85, ports=[RootPort(Gpu(device_id=A100_PCIE_80GB)), RootPort(pf1)]),
        ],
        notes=["VFs are listed as NICs because each has an RDMA device"],
    )


FIXTURES: dict[str, Callable[[], Server]] = {
    "hgx-h100": hgx_h100,
    "hgx-a100": hgx_a100,
    "pcie-4gpu": pcie_4gpu,
    "sriov": sriov,
}
