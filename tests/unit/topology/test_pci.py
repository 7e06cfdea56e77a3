"""PCI tree parsing details: bridge paths, switch ids, VMD domains, ordering."""

from __future__ import annotations

import os
from pathlib import Path

from netmanager.topology.discover import discover
from netmanager.topology.pci import pci_sort_key, scan_pci
from netmanager.topology.sysfs import Sysfs
from railnet.dev.fixtures import Gpu, HostBridge, Nic, RootPort, Server, Switch, build


def _function(directory: Path, vendor: str, device: str, pci_class: str) -> None:
    directory.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("device", device), ("class", pci_class), ("numa_node", "0")):
        (directory / name).write_text(value + "\n")


def test_paths_and_switch_ids(tmp_path: Path) -> None:
    server = Server(
        name="nested",
        sockets=1,
        numa_per_socket=1,
        host_bridges=[HostBridge(numa=0, bus=0x10, ports=[RootPort(Switch(Switch(Gpu()), Nic()))])],
    )
    build(server, tmp_path)
    topo = discover(tmp_path)
    gpu, nic = topo.gpus[0], topo.nics[0]
    # root port, top switch (upstream, downstream), leaf switch (upstream, downstream)
    assert gpu.pcie_path == ["0000:10:01.0", "0000:11:00.0", "0000:12:00.0", "0000:13:00.0", "0000:14:00.0"]
    assert nic.pcie_path == ["0000:10:01.0", "0000:11:00.0", "0000:12:01.0"]
    assert gpu.root_complex == nic.root_complex == "pci0000:10"
    assert gpu.pcie_switch == nic.pcie_switch == "0000:11:00.0"


def test_devices_behind_intel_vmd_keep_their_root_complex(tmp_path: Path) -> None:
    build(Server(name="vmd", sockets=1, numa_per_socket=1, host_bridges=[HostBridge(numa=0, ports=[])]), tmp_path)
    vmd = tmp_path / "devices/pci0000:00/0000:00:0e.0"
    _function(vmd, "0x8086", "0x467f", "0x010400")
    port = vmd / "pci10000:e0" / "10000:e0:1d.0"
    _function(port, "0x8086", "0x09ab", "0x060400")
    nvme = port / "10000:e1:00.0"
    _function(nvme, "0x144d", "0xa80a", "0x010802")
    for target in (vmd, port, nvme):
        os.symlink(os.path.relpath(target, tmp_path / "bus/pci/devices"), tmp_path / "bus/pci/devices" / target.name)
    devices = scan_pci(Sysfs(tmp_path))
    assert devices["10000:e1:00.0"].root_complex == "pci0000:00"
    assert devices["10000:e1:00.0"].bridges == ["0000:00:0e.0", "10000:e0:1d.0"]
    assert devices["10000:e0:1d.0"].is_bridge


def test_pci_order_is_numeric() -> None:
    addresses = ["10000:01:00.0", "0000:9a:00.0", "0000:0a:00.1", "0000:0a:00.0"]
    assert sorted(addresses, key=pci_sort_key) == ["0000:0a:00.0", "0000:0a:00.1", "0000:9a:00.0", "10000:01:00.0"]


def test_non_bdf_entries_in_bus_directory_are_ignored(tmp_path: Path) -> None:
    build(Server(name="x", sockets=1, numa_per_socket=1, host_bridges=[HostBridge(numa=0, ports=[RootPort(Gpu())])]), tmp_path)
    (tmp_path / "bus/pci/devices/README").write_text("not a device\n")
    assert len(discover(tmp_path).gpus) == 1
