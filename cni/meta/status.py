"""The `k8s.v1.cni.cncf.io/network-status` annotation (Network Plumbing WG spec, v1.2): one entry per
attached network, written back to the pod after every delegate succeeded."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"


def status_entry(network: str, ifname: str, result: dict[str, Any], *, default: bool,
                 device_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The entry for the interface `ifname` of a CNI result (canonical 1.x shape)."""
    interfaces = result.get("interfaces", [])
    index = next((i for i, iface in enumerate(interfaces) if iface.get("name") == ifname), None)
    iface = interfaces[index] if index is not None else {}
    ips = [ip for ip in result.get("ips", []) if index is None or ip.get("interface", index) == index]
    entry: dict[str, Any] = {"name": network, "interface": ifname,
                             "ips": [str(ipaddress.ip_interface(ip["address"]).ip) for ip in ips]}
    if iface.get("mac"):
        entry["mac"] = iface["mac"]
    if iface.get("mtu"):
        entry["mtu"] = iface["mtu"]
    entry["default"] = default
    entry["dns"] = result.get("dns") or {}
    gateways = [ip["gateway"] for ip in ips if ip.get("gateway")]
    if gateways:
        entry["gateway"] = gateways
    if device_info:
        entry["device-info"] = device_info
    return entry


def pci_device_info(pci_address: str, rdma_device: str | None = None,
                    pf_pci_address: str | None = None) -> dict[str, Any]:
    """device-info (device-info spec 1.1.0, type pci) for a NIC-backed attachment."""
    pci: dict[str, Any] = {"pci-address": pci_address}
    if rdma_device:
        pci["rdma-device"] = rdma_device
    if pf_pci_address:
        pci["pf-pci-address"] = pf_pci_address
    return {"type": "pci", "version": "1.1.0", "pci": pci}


def encode(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries, indent=1)
