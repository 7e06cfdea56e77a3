"""Networks on a DRA claim's NIC: the pod names one of its own ResourceClaims (and the request in
it) in a networks-annotation element, and the interface is made on exactly the NIC that claim was
allocated and that this node's DRA driver (rdma.railnet.io, netmanager.dra) prepared:

    [{"name": "rail", "interface": "net1",
      "resourceClaim": {"claimName": "devs", "requestName": "nic"}}]

`claimName` is the name of the entry in the pod's `spec.resourceClaims` (as in
`containers[].resources.claims[].name`), `requestName` a request of that claim (optional when the
claim has one rdma.railnet.io device). KubeVirt's DRA networks name a claim the same way
(`resourceClaim: {claimName, requestName}`).

What the pod writes only *selects* among its own claims; which NIC that is comes from the driver's
prepared record and the node's topology (`ClaimSource`, implemented by netmanager.dra.attach), so a
pod cannot point a network at a NIC it was not allocated. The NIC reaches the delegate as the
first plugin's `master` (a PF's netdev: railnet-macvlan, or any plugin that takes a master) or
`deviceID` (a VF's PCI address: railnet-sriov, sriov-cni); whatever the NAD or the selection said
about the parent NIC is replaced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ConfigDict, field_validator

from cni.meta.status import pci_device_info
from cni.spec.errors import INVALID_CONFIG, CniError
from cni.spec.model import WireModel

# Pod claim names and request names are DNS labels (core/v1 PodResourceClaim, resource/v1 DeviceRequest).
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
PARENT_KEYS = ("master", "pciAddress", "rdmaDevice", "deviceID")
SRIOV_TYPES = ("railnet-sriov", "sriov")  # plugins that take a VF by deviceID


class ClaimRef(WireModel):
    """`resourceClaim` of a networks-annotation element."""

    model_config = ConfigDict(extra="forbid")

    claim_name: str
    request_name: str | None = None

    @field_validator("claim_name", "request_name")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 63 or not _LABEL.fullmatch(v)):
            raise ValueError(f"{v!r} is not a DNS label (lowercase letters, digits, '-'; at most 63)")
        return v


@dataclass(frozen=True)
class ClaimDevice:
    """One allocated, prepared NIC of a claim, as this node's DRA driver knows it."""

    claim_namespace: str
    claim_name: str
    claim_uid: str
    request: str
    driver: str
    pool: str
    device: str
    pci_address: str
    netdev: str | None  # in the host namespace; None for a VF whose netdev is elsewhere
    is_vf: bool
    rdma_device: str | None = None
    pf_pci_address: str | None = None
    share_id: str | None = None
    egress_bps: int | None = None  # a bandwidth share smaller than the NIC: the rate to enforce

    @property
    def claim(self) -> str:
        return f"{self.claim_namespace}/{self.claim_name}"


class ClaimSource(Protocol):
    """This node's DRA driver, as the meta plugin asks it (netmanager.dra.attach.ClaimAttachments)."""

    def device(self, namespace: str, claim: str, pod_uid: str, request: str | None) -> ClaimDevice:
        """The NIC of `request` (None: the claim's only rdma.railnet.io device) in ResourceClaim
        namespace/claim, which must be reserved for pod `pod_uid`, allocated on this node and prepared
        here; a CniError says what is wrong."""
        ...

    def set_network_data(self, device: ClaimDevice, data: dict[str, Any] | None) -> None:
        """Write (None: clear) the device's `status.devices[].networkData` in its claim."""
        ...


def claim_object_name(pod_claims: dict[str, str | None], pod: str, ref: ClaimRef) -> str:
    """The ResourceClaim object behind the pod's claim entry `ref.claim_name` (`resourceClaimName`,
    or the one generated from a template, from the pod's status)."""
    if ref.claim_name not in pod_claims:
        have = ", ".join(sorted(pod_claims)) or "none"
        raise CniError(INVALID_CONFIG, f"pod {pod} has no resource claim {ref.claim_name!r}",
                       f"resourceClaim.claimName names an entry of the pod's spec.resourceClaims (it has: {have})")
    name = pod_claims[ref.claim_name]
    if not name:
        raise CniError(INVALID_CONFIG, f"pod {pod}'s resource claim {ref.claim_name!r} has no ResourceClaim yet",
                       "the claim from its template is created by kube-controller-manager before the pod is "
                       "scheduled; check its events")
    return name


def with_claim_device(chain: dict[str, Any], device: ClaimDevice, network: str) -> dict[str, Any]:
    """The delegate chain with its first plugin on the claim's NIC: a PF's netdev as `master`, a VF's
    PCI address as `deviceID` (the plugin must take VFs); any parent the NAD named is dropped."""
    first, *rest = chain["plugins"]
    kind = first.get("type", "")
    plugin = {k: v for k, v in first.items() if k not in PARENT_KEYS}
    runtime = first.get("runtimeConfig")
    if isinstance(runtime, dict) and "deviceID" in runtime:  # a capability arg must not win over the claim
        plugin["runtimeConfig"] = {k: v for k, v in runtime.items() if k != "deviceID"}
    if device.is_vf:
        if kind not in SRIOV_TYPES:
            raise CniError(INVALID_CONFIG, f"network {network}: claim {device.claim} was allocated VF "
                           f"{device.pci_address}, but the network's plugin is {kind!r}",
                           f"a VF is moved into the pod by {' or '.join(SRIOV_TYPES)}; use such a NAD, or claim a "
                           "PF (device.attributes[\"rdma.railnet.io\"].isVF == false)")
        plugin["deviceID"] = device.pci_address
    else:
        if kind in SRIOV_TYPES:
            raise CniError(INVALID_CONFIG, f"network {network}: claim {device.claim} was allocated PF "
                           f"{device.pci_address}, but {kind} attaches VFs only",
                           "use a railnet-macvlan NAD for a PF, or claim a VF "
                           "(device.attributes[\"rdma.railnet.io\"].isVF == true)")
        if not device.netdev:
            raise CniError(INVALID_CONFIG, f"network {network}: NIC {device.pci_address} of claim {device.claim} "
                           "has no netdev in the host namespace",
                           "its netdev is missing or was moved elsewhere; the NIC cannot parent an interface")
        plugin["master"] = device.netdev
    return {**chain, "plugins": [plugin, *rest]}


def device_info(device: ClaimDevice) -> dict[str, Any]:
    return pci_device_info(device.pci_address, device.rdma_device, device.pf_pci_address)


def network_data(result: dict[str, Any], ifname: str) -> dict[str, Any]:
    """`networkData` (resource/v1 NetworkDeviceData) for interface `ifname` of a canonical CNI result:
    interfaceName, ips in CIDR form (what the API validates), hardwareAddress."""
    interfaces = result.get("interfaces", [])
    index = next((i for i, iface in enumerate(interfaces) if iface.get("name") == ifname), None)
    data: dict[str, Any] = {"interfaceName": ifname}
    ips = [ip["address"] for ip in result.get("ips", []) if index is not None and ip.get("interface") == index]
    if ips:
        data["ips"] = ips
    mac = interfaces[index].get("mac") if index is not None else None
    if mac:
        data["hardwareAddress"] = mac
    return data
