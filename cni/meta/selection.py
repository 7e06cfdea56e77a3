"""The pod's network selection: the `k8s.v1.cni.cncf.io/networks` annotation, in Multus's two forms.

    text:  "rail0, other-ns/rail1@rdma1"        ([<namespace>/]<name>[@<ifname>], comma separated)
    JSON:  [{"name": "rail0", "namespace": "ml", "interface": "net1", "ips": ["10.1.0.5/24"],
             "mac": "02:00:00:00:00:01", "default-route": ["10.1.0.1"], "cni-args": {...},
             "bandwidth": {...}, "portMappings": [...], "deviceID": "0000:3b:02.1",
             "resourceClaim": {"claimName": "devs", "requestName": "nic"}}]   (the last: railnet's)

Interfaces are named net1..netN by position unless the selection names one; a name used twice is
an error, as is a network outside the pod's namespace when namespace isolation is on. Everything
here is pure: the agent reads the annotation from its pod cache and calls `parse_selections`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from cni.meta.claims import ClaimRef
from cni.spec.errors import INVALID_CONFIG, CniError
from cni.spec.model import MacAddress, WireModel
from cni.spec.request import validate_ifname

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
DEFAULT_NETWORK_ANNOTATION = "v1.multus-cni.io/default-network"
# Kubernetes object names: a NAD name is a DNS-1123 subdomain, a namespace a DNS-1123 label.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _bad(what: str, details: str) -> CniError:
    return CniError(INVALID_CONFIG, f"invalid {NETWORKS_ANNOTATION} annotation: {what}", details)


def check_name(name: str, kind: str = "network") -> str:
    if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} is not a valid Kubernetes name (lowercase letters, digits, '-', '.')")
    return name


def check_namespace(namespace: str) -> str:
    if len(namespace) > 63 or not _LABEL.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r} is not a valid Kubernetes namespace name")
    return namespace


class NetworkSelection(WireModel):
    """One element of the annotation (Multus's NetworkSelectionElement), with the wire names Multus uses."""

    model_config = ConfigDict(extra="forbid")

    name: str
    namespace: str | None = None
    interface: str | None = None
    ips: list[str] = Field(default_factory=list)
    mac: MacAddress | None = None
    default_route: list[str] | None = Field(default=None, alias="default-route")  # None: not asked; []: its own gateway
    cni_args: dict[str, Any] | None = Field(default=None, alias="cni-args")
    bandwidth: dict[str, Any] | None = None
    port_mappings: list[dict[str, Any]] = Field(default_factory=list, alias="portMappings")
    infiniband_guid: str | None = Field(default=None, alias="infiniband-guid")
    device_id: str | None = Field(default=None, alias="deviceID")
    # railnet: the interface goes on the NIC this pod's DRA claim was allocated (cni.meta.claims)
    resource_claim: ClaimRef | None = Field(default=None, alias="resourceClaim")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        return None if v is None else check_namespace(v)

    @field_validator("interface")
    @classmethod
    def _interface(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                validate_ifname(v)
            except CniError as exc:
                raise ValueError(f"interface {v!r}: {exc.details}") from None
        return v

    @field_validator("ips")
    @classmethod
    def _ips(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_interface(item)
            except ValueError:
                raise ValueError(f"ips entry {item!r} is not an address (like 10.1.0.5/24)") from None
        return v

    @field_validator("default_route")
    @classmethod
    def _gateways(cls, v: list[str] | None) -> list[str] | None:
        for item in v or []:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"default-route entry {item!r} is not a gateway address") from None
        return v

    @model_validator(mode="after")
    def _one_device_source(self) -> NetworkSelection:
        if self.resource_claim is not None and self.device_id is not None:
            raise ValueError("deviceID and resourceClaim both name the device: give one (the claim's NIC is "
                             "the device)")
        return self

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def runtime_config(self) -> dict[str, Any]:
        """What this selection asks of the delegate, as CNI capability args (runtimeConfig)."""
        out: dict[str, Any] = {}
        if self.ips:
            out["ips"] = list(self.ips)
        if self.mac:
            out["mac"] = self.mac
        if self.bandwidth:
            out["bandwidth"] = self.bandwidth
        if self.port_mappings:
            out["portMappings"] = self.port_mappings
        if self.infiniband_guid:
            out["infinibandGUID"] = self.infiniband_guid
        if self.device_id:
            out["deviceID"] = self.device_id
        return out


def _parse_text_entry(entry: str) -> dict[str, Any]:
    rest, at, ifname = entry.partition("@")
    namespace, slash, name = rest.rpartition("/")
    if at and not ifname:
        raise ValueError(f"{entry!r} has '@' but no interface name after it")
    if slash and not namespace:
        raise ValueError(f"{entry!r} has '/' but no namespace before it")
    if "/" in namespace:
        raise ValueError(f"{entry!r} has more than one '/'")
    out: dict[str, Any] = {"name": name}
    if slash:
        out["namespace"] = namespace
    if at:
        out["interface"] = ifname
    return out


def _raw_elements(annotation: str) -> list[Any]:
    text = annotation.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _bad("not valid JSON", f"{exc.msg} at column {exc.colno}") from None
        if not isinstance(items, list):
            raise _bad("the JSON form must be a list", f"got {type(items).__name__}")
        return items
    out = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            raise _bad("empty entry", "the text form is a comma-separated list of [namespace/]name[@interface]")
        try:
            out.append(_parse_text_entry(entry))
        except ValueError as exc:
            raise _bad(str(exc), "each entry is [namespace/]name[@interface]") from None
    return out


def parse_selections(annotation: str, pod_namespace: str, *, primary_ifname: str = "eth0", isolation: bool = False,
                     global_namespaces: tuple[str, ...] = ()) -> list[NetworkSelection]:
    """The pod's secondary networks in order, namespaces filled in, interfaces named and checked
    (none may take the primary network's interface)."""
    selections: list[NetworkSelection] = []
    for position, raw in enumerate(_raw_elements(annotation)):
        if not isinstance(raw, dict):
            raise _bad(f"element {position} is not an object", "each JSON element is {\"name\": ..., ...}")
        try:
            sel = NetworkSelection.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'element'}: "
                                 f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors())
            raise _bad(f"element {position}", problems) from None
        sel.namespace = sel.namespace or pod_namespace
        sel.interface = sel.interface or f"net{position + 1}"
        if isolation and sel.namespace not in (pod_namespace, *global_namespaces):
            raise CniError(INVALID_CONFIG, f"network {sel.key} is in another namespace",
                           f"namespace isolation is on: a pod in {pod_namespace!r} may use networks of its own "
                           f"namespace or of {', '.join(global_namespaces) or 'no other namespace'}")
        selections.append(sel)
    seen: dict[str, str] = {primary_ifname: "the primary network"}
    for sel in selections:
        assert sel.interface is not None
        if sel.interface in seen:
            raise _bad(f"interface {sel.interface} is used twice",
                       f"by {seen[sel.interface]} and {sel.key}; give each network its own interface")
        seen[sel.interface] = sel.key
    return selections
