"""Declarative description of a server's PCIe/NUMA layout, for building fake sysfs trees.

A ``Server`` holds host bridges (root complexes); a host bridge holds root ports (or integrated
endpoints); a root port holds one child; a ``Switch`` holds any number of children, each behind its
own downstream port. Leaves are ``Gpu``, ``Nic`` and ``Device`` (anything else: NVMe, NVSwitch,
a management NIC). Bus numbers, addresses and device names are assigned by the builder.

Specs compare by identity (``eq=False``): the builder's ground truth uses "is this the same switch
object" to decide tiers, independently of the sysfs paths that discovery reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NVIDIA = 0x10DE
MELLANOX = 0x15B3
BROADCOM_PLX = 0x1000
INTEL = 0x8086
AMD = 0x1022

CLASS_3D = 0x030200
CLASS_ETHERNET = 0x020000
CLASS_INFINIBAND = 0x020700
CLASS_NVME = 0x010802
CLASS_BRIDGE_OTHER = 0x068000
CLASS_HOST_BRIDGE = 0x060000
CLASS_PCI_BRIDGE = 0x060400


@dataclass(eq=False)
class Gpu:
    device_id: int = 0x2330  # H100 SXM5
    vendor: int = NVIDIA
    pci_class: int = CLASS_3D


@dataclass(eq=False)
class Nic:
    """A Mellanox NIC: one PCI function per port, each with a netdev and an RDMA device."""

    device_id: int = 0x1021  # ConnectX-7
    link_layer: str = "Ethernet"  # or "InfiniBand"
    speed_gbps: int = 400
    functions: int = 1  # ports (PFs) on the card
    vfs: int = 0  # SR-IOV VFs per PF, each with its own RDMA device unless vf_rdma is False
    vf_device_id: int = 0x101E  # ConnectX family mlx5Gen Virtual Function
    vf_rdma: bool = True
    vfs_in_pods: tuple[int, ...] = ()  # VF indexes whose netdev was moved into a pod namespace
    switchdev: bool = False  # eswitch in switchdev mode: one representor netdev per VF on the PF
    rdma: bool = True  # False: mlx5_ib not loaded, no RDMA device at all
    netdev: str | None = None  # names default to predictable ones (enp24s0np0, mlx5_3)
    rdma_name: str | None = None
    vendor: int = MELLANOX


@dataclass(eq=False)
class Device:
    """Any other PCI function (NVMe, NVSwitch, management NIC without RDMA)."""

    vendor: int
    device_id: int
    pci_class: int
    netdev: str | None = None


@dataclass(eq=False, init=False)
class Switch:
    children: list[Endpoint | Switch]
    vendor: int = BROADCOM_PLX
    device_id: int = 0xC030  # PEX89000 (Gen5); 0xC010 is PEX88000 (Gen4)

    def __init__(self, *children: Endpoint | Switch, vendor: int = BROADCOM_PLX, device_id: int = 0xC030) -> None:
        self.children = list(children)
        self.vendor = vendor
        self.device_id = device_id


@dataclass(eq=False)
class RootPort:
    child: Endpoint | Switch
    vendor: int = INTEL
    device_id: int = 0x352A  # Sapphire Rapids PCIe root port


@dataclass(eq=False)
class HostBridge:
    numa: int
    ports: list[RootPort | Endpoint]  # an Endpoint here is a root-complex integrated device
    bus: int | None = None  # root bus number; the next free one (rounded to 0x10) when None


@dataclass(eq=False)
class Server:
    name: str
    sockets: int
    numa_per_socket: int
    host_bridges: list[HostBridge]
    cores_per_numa: int = 4
    threads_per_core: int = 2
    nvlinks: int = 0  # NVLinks between every GPU pair (NVSwitch systems); 0 = PCIe only
    cpu_vendor: int = INTEL
    notes: list[str] = field(default_factory=list)

    @property
    def numa_nodes(self) -> int:
        return self.sockets * self.numa_per_socket

    def socket_of(self, numa: int) -> int:
        return numa // self.numa_per_socket


Endpoint = Gpu | Nic | Device
