"""NUMA node -> CPU socket, from the CPU topology in sysfs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .sysfs import Sysfs, parse_cpulist

NODE_RE = re.compile(r"^node(\d+)$")
CPU_RE = re.compile(r"^cpu(\d+)$")


@dataclass
class CpuTopology:
    sockets: int
    numa_to_socket: dict[int, int]  # memory-only nodes (no CPUs) are absent

    def socket_of(self, numa_node: int) -> int:
        return self.numa_to_socket.get(numa_node, -1)

    def effective_numa(self, numa_node: int) -> int:
        """A device's NUMA node; -1 on a single-node machine means "the only node"."""
        if numa_node < 0 and len(self.numa_to_socket) == 1:
            return next(iter(self.numa_to_socket))
        return numa_node


def read_cpu_topology(fs: Sysfs) -> CpuTopology:
    packages = _cpu_packages(fs)
    numa_to_socket: dict[int, int] = {}
    node_dir = fs.path("devices", "system", "node")
    for name in fs.listdir(node_dir):
        match = NODE_RE.match(name)
        if not match:
            continue
        cpulist_path = node_dir / name / "cpulist"
        cpus = parse_cpulist(fs.read(cpulist_path), cpulist_path)
        sockets = {packages[cpu] for cpu in cpus if cpu in packages}
        if sockets:
            # A node never spans packages on real hardware; take the lowest if a VM claims otherwise.
            numa_to_socket[int(match.group(1))] = min(sockets)
    if not numa_to_socket and len(set(packages.values())) == 1:
        # Kernel without NUMA support: one implicit node 0 on the only package.
        numa_to_socket[0] = next(iter(packages.values()))
    return CpuTopology(sockets=len(set(packages.values())), numa_to_socket=numa_to_socket)


def _cpu_packages(fs: Sysfs) -> dict[int, int]:
    cpu_dir = fs.path("devices", "system", "cpu")
    packages: dict[int, int] = {}
    for name in fs.listdir(cpu_dir):
        match = CPU_RE.match(name)
        if not match:
            continue
        # Offline CPUs have no topology directory; they cannot be placed, so skip them.
        package = fs.read_int_or(cpu_dir / name / "topology" / "physical_package_id")
        if package is not None:
            packages[int(match.group(1))] = package
    return packages
