"""The node's RDMA NICs as one ResourceSlice (resource.k8s.io/v1) of driver `rdma.railnet.io`.

Pure: `devices(topology)` and `slice_object(...)` turn a discovered NodeTopology into the API object;
the publisher (driver.py) compares specs and writes. One pool per node, named after the node, one
slice in it (a node has far fewer than the 128 devices a slice may hold).

A device is every NIC with an RDMA device (a PF, or a VF with its own RDMA device: DRANET lists VFs
too); a Mellanox PF whose RDMA driver is not loaded has no character devices to hand out and is left
out. Device names are derived from the PCI address (`nic-0000-19-00-0`), so they stay the same when
a netdev is renamed or moved into a pod.

Attributes: the standard `resource.kubernetes.io/{pcieRoot, pciBusID, numaNode}` (numaNode scalar,
omitted when the kernel does not know it, as the standard says), and railnet's own under
`rdma.railnet.io/` (ATTRS below).

NIC bandwidth is consumable capacity (resource.k8s.io/v1, DRAConsumableCapacity, beta and on since
1.36): a NIC with a known speed is `allowMultipleAllocations` with capacity `rdma.railnet.io/bandwidth`
= its speed in bits per second, and `requestPolicy.default` = all of it, so a claim that does not ask
for bandwidth gets the NIC to itself and claims that do (`capacity.requests`) share it until the sum
reaches the speed. A NIC whose speed is unknown is allocated whole only.

A NIC whose RDMA port is not up (netmanager.dra.link_state) stays in the slice with the device taint
`rdma.railnet.io/link-down=<state>:NoSchedule` (device taints, GA in 1.37): no new claim gets it unless
it tolerates the taint, and claims that already have it are left alone (NoSchedule, not NoExecute).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final

from netmanager.dra import DRIVER
from netmanager.topology.model import NodeTopology, RdmaNic

STANDARD: Final = "resource.kubernetes.io"
PCIE_ROOT: Final = f"{STANDARD}/pcieRoot"
PCI_BUS_ID: Final = f"{STANDARD}/pciBusID"
NUMA_NODE: Final = f"{STANDARD}/numaNode"
BANDWIDTH: Final = f"{DRIVER}/bandwidth"
# railnet's own attributes (all under rdma.railnet.io/), name -> what it says.
ATTRS: Final = {
    "pcieSwitch": "PCI address of the upstream port of the top-level PCIe switch above the NIC",
    "rail": "rail index: position of the NIC's physical function among the node's RDMA-capable PFs in PCI "
            "order (a PF whose RDMA driver is not loaded keeps its index, so the others do not move)",
    "linkLayer": '"Ethernet" (RoCE) or "InfiniBand"',
    "speedMbps": "link speed in Mb/s, when the kernel reports it",
    "rdmaDevice": "RDMA device name, e.g. mlx5_0",
    "netdev": "the NIC's netdev in the host namespace, when it is there",
    "socket": "CPU socket of the NIC's NUMA node",
    "isVF": "an SR-IOV virtual function",
    "pfPciAddress": "a VF's physical function",
    "sriovTotalVFs": "VFs the PF can have",
    "sriovNumVFs": "VFs the PF has now",
    "vendor": "PCI vendor id, 0x-hex",
    "deviceID": "PCI device id, 0x-hex",
}
MAX_DEVICES: Final = 128
MAX_TAINTED_DEVICES: Final = 64  # the API's limit for a slice in which any device has taints
LINK_DOWN_TAINT: Final = f"{DRIVER}/link-down"
HASH_ANNOTATION: Final = f"{DRIVER}/devices-sha256"
_NAME_RE: Final = re.compile(r"[^a-z0-9]+")


def device_name(pci_address: str) -> str:
    """A DNS label from a PCI address: 0000:19:00.0 -> nic-0000-19-00-0."""
    return "nic-" + _NAME_RE.sub("-", pci_address.lower()).strip("-")


def slice_name(node_name: str) -> str:
    return f"{node_name}-{DRIVER}"


def rails(topology: NodeTopology) -> dict[str, int]:
    """PF PCI address -> rail index, in PCI order (discovery lists NICs sorted by address)."""
    pfs = [n.pci_address for n in topology.nics if not n.is_vf]
    return {address: index for index, address in enumerate(pfs)}


def _attributes(nic: RdmaNic, rail: int | None) -> dict[str, dict[str, Any]]:
    own: dict[str, Any] = {
        "rdmaDevice": nic.rdma_device,
        "linkLayer": nic.link_layer,
        "isVF": nic.is_vf,
        "socket": nic.socket,
        "pcieSwitch": nic.pcie_switch,
        "rail": rail,
        "speedMbps": nic.speed_mbps,
        "netdev": nic.name if nic.netdev_present else None,
        "pfPciAddress": nic.pf_pci_address,
        "vendor": nic.vendor or None,
        "deviceID": nic.device_id or None,
    }
    if not nic.is_vf:
        own.update(sriovTotalVFs=nic.sriov_total_vfs, sriovNumVFs=nic.sriov_num_vfs)
    attrs: dict[str, dict[str, Any]] = {PCI_BUS_ID: {"string": nic.pci_address}}
    if nic.root_complex:
        attrs[PCIE_ROOT] = {"string": nic.root_complex}
    if nic.numa_node >= 0:
        attrs[NUMA_NODE] = {"int": nic.numa_node}
    for key, value in own.items():
        if value is None:
            continue
        kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "string"
        attrs[f"{DRIVER}/{key}"] = {kind: value}
    return attrs


def devices(topology: NodeTopology, down: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The slice's devices, one per NIC with an RDMA device, in PCI order. A NIC in `down` (PCI address
    -> its RDMA port state) carries the taint `rdma.railnet.io/link-down=<state>:NoSchedule`: no new
    claim is allocated it (unless it tolerates the taint), claims that have it keep it."""
    rail_of = rails(topology)
    out = []
    for nic in topology.nics:
        if not nic.rdma_device:
            continue
        device: dict[str, Any] = {"name": device_name(nic.pci_address),
                                  "attributes": _attributes(nic, rail_of.get(nic.pf_pci_address or nic.pci_address))}
        if nic.speed_mbps:  # consumable: claims share the NIC by bandwidth; one that asks for none takes it all
            full = f"{nic.speed_mbps}M"
            device["allowMultipleAllocations"] = True
            device["capacity"] = {BANDWIDTH: {"value": full, "requestPolicy": {"default": full}}}
        if down and nic.pci_address in down:
            device["taints"] = [{"key": LINK_DOWN_TAINT, "value": _taint_value(down[nic.pci_address]),
                                 "effect": "NoSchedule"}]
        out.append(device)
    limit = MAX_TAINTED_DEVICES if any("taints" in d for d in out) else MAX_DEVICES
    if len(out) > limit:
        raise ValueError(f"{len(out)} RDMA devices on {topology.node_name}: a ResourceSlice holds at most {limit}")
    return out


def _taint_value(state: str) -> str:
    """A label value (what a taint's value must be): `DOWN`, `INIT`, ..."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "_", state).strip("_.-")[:63]
    return value or "unknown"


def slice_object(node_name: str, devs: list[dict[str, Any]], generation: int,
                 node_uid: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": slice_name(node_name), "labels": {"app.kubernetes.io/part-of": "railnet"},
                            "annotations": {HASH_ANNOTATION: devices_hash(devs)}}
    if node_uid:  # the slice goes when the node goes
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid,
                                    "controller": True}]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": meta,
            "spec": {"driver": DRIVER, "nodeName": node_name,
                     "pool": {"name": node_name, "generation": generation, "resourceSliceCount": 1},
                     "devices": devs}}


def devices_hash(devs: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(devs, sort_keys=True).encode()).hexdigest()[:16]


def nic_by_device(topology: NodeTopology) -> dict[str, RdmaNic]:
    """Device name -> NIC, for the NICs the slice lists."""
    return {device_name(n.pci_address): n for n in topology.nics if n.rdma_device}
