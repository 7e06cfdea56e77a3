"""Which RDMA NICs have a port that is not up, for the slice's device taints.

Read from sysfs, as the kernel shows an RDMA port: `<sysfs>/class/infiniband/<dev>/ports/<n>/state`
is `4: ACTIVE` (or `5: ACTIVE_DEFER`) when the link is up; `1: DOWN`, `2: INIT`, `3: ARMED` otherwise.
For RoCE the port follows the netdev's carrier. A NIC whose state cannot be read is not reported (an
unknown state is no reason to keep claims off it).
"""

from __future__ import annotations

from pathlib import Path

from netmanager.topology.model import NodeTopology

UP = ("ACTIVE", "ACTIVE_DEFER")


def port_state(sysfs: Path, rdma_device: str) -> str | None:
    """The first port whose state is not up (`DOWN`, `INIT`, ...), "" when all are up, None unknown."""
    ports = sysfs / "class" / "infiniband" / rdma_device / "ports"
    try:
        states = [(p / "state").read_text().strip() for p in sorted(ports.iterdir())]
    except OSError:
        return None
    if not states:
        return None
    for state in states:
        name = state.partition(":")[2].strip() or state
        if name not in UP:
            return name
    return ""


def down_nics(sysfs: Path, topology: NodeTopology) -> dict[str, str]:
    """PCI address -> port state, for the RDMA NICs whose link is not up."""
    out = {}
    for nic in topology.nics:
        if nic.rdma_device and (state := port_state(sysfs, nic.rdma_device)):
            out[nic.pci_address] = state
    return out
