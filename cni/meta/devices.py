"""Devices for networks, as Multus assigns them: a NetworkAttachmentDefinition annotated
`k8s.v1.cni.cncf.io/resourceName` (an SR-IOV VF pool, an RDMA device pool) is attached to a device
the kubelet allocated to the pod for that resource; its ID (a PCI address for NICs) goes into the
delegate's config as `deviceID`, and into network-status as device-info.

Two networks on the same resource get distinct devices, in the kubelet's order. A pod may also
name a device itself (`deviceID` in the networks annotation): it must be one the pod holds, or a
pod author could point a plugin at another pod's VF.
"""

from __future__ import annotations

from typing import Any, Protocol

from cni.linux.nic import PCI_ADDRESS
from cni.meta.status import pci_device_info
from cni.spec.errors import INVALID_CONFIG, CniError

RESOURCE_NAME_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"


class DeviceSource(Protocol):
    """The kubelet's answer to "which devices does this pod hold" (netmanager.kubelet.podresources)."""

    def devices(self, namespace: str, name: str) -> dict[str, list[str]]: ...  # resource -> device IDs


class DeviceAssigner:
    """Hands out one pod's devices to its networks during one plan."""

    def __init__(self, source: DeviceSource | None, namespace: str, name: str) -> None:
        self.source = source
        self.pod = f"{namespace}/{name}"
        self._key = (namespace, name)
        self._held: dict[str, list[str]] | None = None
        self._used: set[str] = set()

    def _devices(self, why: str) -> dict[str, list[str]]:
        if self._held is None:
            if self.source is None:
                raise CniError(INVALID_CONFIG, f"{why}, but the railnet agent cannot ask the kubelet",
                               "run the agent with --pod-resources-socket (the kubelet's pod-resources API)")
            try:
                self._held = self.source.devices(*self._key)
            except RuntimeError as exc:
                raise CniError(INVALID_CONFIG, f"{why}: the kubelet's pod-resources API failed", str(exc)) from None
        return self._held

    def for_resource(self, network: str, resource: str) -> str:
        held = self._devices(f"network {network} is bound to resource {resource}")
        free = [d for d in held.get(resource, []) if d not in self._used]
        if not free:
            have = len(held.get(resource, []))
            raise CniError(INVALID_CONFIG, f"network {network} needs a {resource} device, but pod {self.pod} "
                           f"holds {have} and they are taken" if have else
                           f"network {network} needs a {resource} device, but pod {self.pod} holds none",
                           f"request one more in the pod's resources (limits: {{{resource}: 1}}) per network "
                           f"bound to it ({RESOURCE_NAME_ANNOTATION})")
        self._used.add(free[0])
        return free[0]

    def check_named(self, network: str, device_id: str) -> None:
        held = self._devices(f"network {network} names device {device_id}")
        if not any(device_id in ids for ids in held.values()):
            raise CniError(INVALID_CONFIG, f"network {network} names device {device_id}, which pod {self.pod} "
                           "does not hold", "a pod may only name devices the kubelet allocated to it")
        self._used.add(device_id)


def with_device_id(chain: dict[str, Any], device_id: str) -> dict[str, Any]:
    """`deviceID` on the chain's first plugin: the one that creates the interface."""
    first, *rest = chain["plugins"]
    return {**chain, "plugins": [{**first, "deviceID": device_id}, *rest]}


def device_info(device_id: str) -> dict[str, Any] | None:
    """device-info for network-status when the ID is a PCI address (NICs, VFs); None otherwise."""
    return pci_device_info(device_id.lower()) if PCI_ADDRESS.fullmatch(device_id) else None
