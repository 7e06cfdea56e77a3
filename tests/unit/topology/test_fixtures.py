"""Discovery on the four fixture servers matches each layout's known tiers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from netmanager.topology.discover import discover
from netmanager.topology.model import NodeTopology, Tier
from railnet.dev.fixture_servers import FIXTURES
from railnet.dev.fixtures import (
    BuiltServer,
    Gpu,
    HostBridge,
    Nic,
    RootPort,
    Server,
    build,
    nvidia_smi_topo,
)

Make = Callable[[str], BuiltServer]
S, R, N, K, X = Tier.SAME_SWITCH, Tier.SAME_ROOT, Tier.SAME_NUMA, Tier.SAME_SOCKET, Tier.CROSS_SOCKET


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_discovery_matches_ground_truth(shared_fixture: Make, name: str) -> None:
    built = shared_fixture(name)
    topo = discover(built.root, node_name=name)
    assert [g.pci_address for g in topo.gpus] == [g.address for g in built.gpus]
    assert [n.pci_address for n in topo.nics] == [n.address for n in built.nics]
    assert [n.rdma_device for n in topo.nics] == [n.rdma for n in built.nics]
    assert topo.gpu_gpu == built.gpu_gpu_pcie()
    assert topo.gpu_nic == built.gpu_nic()
    assert topo.numa_to_socket == built.numa_to_socket
    assert topo.sockets == built.server.sockets
    assert topo.warnings == []


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_generated_nvidia_smi_agrees_with_sysfs(shared_fixture: Make, name: str) -> None:
    built = shared_fixture(name)
    topo = discover(built.root, nvidia_smi_text=nvidia_smi_topo(built), node_name=name)
    assert topo.gpu_gpu == built.gpu_gpu()
    assert topo.gpu_nic == built.gpu_nic()
    assert topo.warnings == []  # every PCIe label nvidia-smi would print agrees with sysfs


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_json_round_trip_uses_camel_case(shared_fixture: Make, name: str) -> None:
    topo = discover(shared_fixture(name).root, node_name=name)
    text = topo.model_dump_json(by_alias=True)
    assert '"gpuNic"' in text and '"pciAddress"' in text and '"numaToSocket"' in text
    assert NodeTopology.model_validate_json(text) == topo


def test_hgx_h100(shared_fixture: Make) -> None:
    built = shared_fixture("hgx-h100")
    topo = discover(built.root)
    assert [g.model for g in topo.gpus] == ["NVIDIA H100 80GB HBM3"] * 8
    assert all(n.link_layer == "Ethernet" and n.speed_mbps == 400_000 and n.vendor == "0x15b3" for n in topo.nics)
    for i in range(8):
        assert topo.nearest_nics(i) == [i]  # the NIC under the GPU's own PCIe switch
        assert topo.gpus[i].pcie_switch == topo.nics[i].pcie_switch is not None
        assert topo.gpus[i].socket == topo.nics[i].socket == i // 4
    assert topo.gpu_gpu[0][4] == X
    assert topo.gpu_gpu[0][1] == N  # different host bridges, same NUMA node
    assert topo.gpu_nic[0] == [S, N, N, N, X, X, X, X]
    # The management NIC has no RDMA device and the NVMe drives are not GPUs.
    assert "eno1" not in [n.name for n in topo.nics] and len(topo.gpus) == 8

    with_smi = discover(built.root, nvidia_smi_text=nvidia_smi_topo(built))
    assert with_smi.gpu_gpu[0][4] == Tier.NVLINK
    assert with_smi.gpu_nvlinks[0][4] == 18 and with_smi.gpu_nvlinks[3][3] == 0


def test_hgx_a100(shared_fixture: Make) -> None:
    topo = discover(shared_fixture("hgx-a100").root)
    assert len(topo.gpus) == 8  # the six NVSwitches (class 0x0680) are not GPUs
    assert [g.numa_node for g in topo.gpus] == [3, 3, 1, 1, 7, 7, 5, 5]
    assert topo.numa_to_socket == {n: n // 4 for n in range(8)}
    assert topo.gpu_gpu[0][1] == S and topo.gpu_gpu[0][2] == K and topo.gpu_gpu[0][4] == X
    compute = [n for n in topo.nics if n.link_layer == "InfiniBand"]
    storage = [n for n in topo.nics if n.link_layer == "Ethernet"]
    assert [n.rdma_device for n in compute] == [f"mlx5_{i}" for i in (0, 1, 2, 3, 6, 7, 8, 9)]
    assert [n.rdma_device for n in storage] == ["mlx5_4", "mlx5_5"]
    assert all(n.name.startswith("ibp") and n.speed_mbps == 200_000 for n in compute)
    assert topo.nearest_nics(0) == [0, 1] and topo.nearest_nics(7) == [8, 9]


def test_pcie_4gpu_has_no_switches(shared_fixture: Make) -> None:
    topo = discover(shared_fixture("pcie-4gpu").root)
    assert all(g.pcie_switch is None and len(g.pcie_path) == 1 for g in topo.gpus)
    assert topo.gpu_gpu == [
        [0, R, X, X],
        [R, 0, X, X],
        [X, X, 0, N],
        [X, X, N, 0],
    ]
    assert topo.gpu_nic == [[N, X], [N, X], [X, N], [X, R]]


def test_sriov_pf_vf_relations(shared_fixture: Make) -> None:
    built = shared_fixture("sriov")
    topo = discover(built.root)
    pfs = [n for n in topo.nics if not n.is_vf]
    vfs = [n for n in topo.nics if n.is_vf]
    assert len(pfs) == 2 and len(vfs) == 8
    for pf in pfs:
        assert (pf.sriov_num_vfs, pf.sriov_total_vfs, pf.pf_pci_address) == (4, 8, None)
        children = [v for v in vfs if v.pf_pci_address == pf.pci_address]
        assert pf.vf_pci_addresses == [v.pci_address for v in children]
        assert all(v.device_id == "0x101e" and v.rdma_device and v.socket == pf.socket for v in children)
        assert all(v.pcie_path == pf.pcie_path and v.vf_pci_addresses == [] for v in children)
    # PF0 sits under GPU0's switch, so do its VFs.
    assert topo.gpu_nic[0][: 1 + 4] == [S] * 5
    # VF 1 of PF0 was moved into a pod: still listed (it has an RDMA device) under its RDMA name.
    moved = vfs[1]
    assert (moved.netdev_present, moved.name) == (False, moved.rdma_device)
    # PF1 is in switchdev mode: its representors (enp135s0f0np0_N) are neither the PF's name nor NICs.
    assert pfs[1].name == "enp135s0f0np0"
    assert not any("_" in n.name and n.name.startswith("enp") for n in topo.nics)


def test_vfs_without_rdma_are_not_listed(tmp_path: Path) -> None:
    server = Server(
        name="plain-vfs",
        sockets=1,
        numa_per_socket=1,
        host_bridges=[HostBridge(numa=0, ports=[RootPort(Gpu()), RootPort(Nic(vfs=3, vf_rdma=False))])],
    )
    built = build(server, tmp_path / "s")
    topo = discover(built.root)
    assert [n.is_vf for n in topo.nics] == [False]
    assert len(topo.nics[0].vf_pci_addresses) == 3  # the relation is still reported on the PF


def test_mellanox_pf_without_rdma_driver_is_listed(tmp_path: Path) -> None:
    server = Server(
        name="no-ib",
        sockets=1,
        numa_per_socket=1,
        host_bridges=[HostBridge(numa=0, ports=[RootPort(Gpu()), RootPort(Nic(rdma=False, speed_gbps=100))])],
    )
    topo = discover(build(server, tmp_path / "s").root)
    assert [(n.rdma_device, n.link_layer, n.speed_mbps) for n in topo.nics] == [(None, "Ethernet", 100_000)]
    assert topo.gpu_nic == [[R]]
