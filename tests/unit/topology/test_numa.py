"""NUMA node -> socket from CPU topology, and devices whose NUMA node the kernel does not know."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from netmanager.topology.discover import discover
from netmanager.topology.model import Tier
from netmanager.topology.numa import read_cpu_topology
from netmanager.topology.sysfs import Sysfs, TopologyError, parse_cpulist
from railnet.dev.fixtures import Gpu, HostBridge, Nic, RootPort, Server, build


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]), ("", []), ("5\n", [5]), ("0-1, 4", [0, 1, 4])],
)
def test_parse_cpulist(text: str, cpus: list[int]) -> None:
    assert parse_cpulist(text) == cpus


def test_parse_cpulist_rejects_garbage() -> None:
    with pytest.raises(TopologyError, match="bad CPU list"):
        parse_cpulist("0-x", "node0/cpulist")


def _server(sockets: int, numa_per_socket: int) -> Server:
    bridges = [
        HostBridge(numa=n, ports=[RootPort(Gpu()), RootPort(Nic())]) for n in range(sockets * numa_per_socket)
    ]
    return Server(name="numa", sockets=sockets, numa_per_socket=numa_per_socket, host_bridges=bridges)


def test_numa_to_socket_with_several_nodes_per_socket(tmp_path: Path) -> None:
    build(_server(sockets=2, numa_per_socket=2), tmp_path)
    cpus = read_cpu_topology(Sysfs(tmp_path))
    assert (cpus.sockets, cpus.numa_to_socket) == (2, {0: 0, 1: 0, 2: 1, 3: 1})


def test_memory_only_node_has_no_socket(tmp_path: Path) -> None:
    build(_server(sockets=1, numa_per_socket=1), tmp_path)
    node = tmp_path / "devices/system/node/node1"
    node.mkdir()
    (node / "cpulist").write_text("\n")  # CXL memory expander: a node without CPUs
    cpus = read_cpu_topology(Sysfs(tmp_path))
    assert cpus.numa_to_socket == {0: 0} and cpus.socket_of(1) == -1


def test_single_node_machine_reporting_minus_one(tmp_path: Path) -> None:
    build(_server(sockets=1, numa_per_socket=1), tmp_path)
    for numa_file in (tmp_path / "devices").rglob("numa_node"):
        numa_file.write_text("-1\n")
    topo = discover(tmp_path)
    assert [(g.numa_node, g.socket) for g in topo.gpus] == [(0, 0)]
    assert [(n.numa_node, n.socket) for n in topo.nics] == [(0, 0)]


def test_kernel_without_numa_directory(tmp_path: Path) -> None:
    build(_server(sockets=1, numa_per_socket=1), tmp_path)
    shutil.rmtree(tmp_path / "devices/system/node")
    topo = discover(tmp_path)
    assert topo.numa_to_socket == {0: 0}
    assert topo.gpus[0].socket == 0


def test_unknown_numa_on_a_two_socket_machine_is_cross_socket(tmp_path: Path) -> None:
    build(_server(sockets=2, numa_per_socket=1), tmp_path)
    for numa_file in (tmp_path / "devices").rglob("numa_node"):
        numa_file.write_text("-1\n")
    topo = discover(tmp_path)
    assert all(g.numa_node == -1 and g.socket == -1 for g in topo.gpus)
    # Same host bridge is still known from the PCIe tree; anything further is a pessimistic guess.
    assert topo.gpu_nic == [[Tier.SAME_ROOT, Tier.CROSS_SOCKET], [Tier.CROSS_SOCKET, Tier.SAME_ROOT]]
