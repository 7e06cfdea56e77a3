"""The IPPool custom resource (railnet.io/v1alpha1): the cluster-side description of an address pool.

These pydantic models are the single owner of the IPPool schema: `python -m railnet.dev.crdgen` turns them
into deploy/crds/ippools.railnet.io.yaml, and the IPAM code parses the objects it reads with them.
Python attributes are snake_case; the Kubernetes form is camelCase (``model_dump(by_alias=True)``).

Semantics:
- ``subnet`` is the network the addresses belong to (prefix length = the interface's prefix).
- ``ranges`` restrict allocation to [start, end] spans inside the subnet; empty = the whole subnet
  minus the network address, the broadcast address (IPv4) and the gateway.
- ``exclude`` removes single addresses, CIDRs or ``start-end`` spans from what the ranges give.
- ``node_selector`` (label equality, like a pod's nodeSelector) limits the nodes that may draw from the
  pool; ``namespaces`` limits the pod namespaces. Unset means "any".
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "railnet.io"
VERSION = "v1alpha1"
KIND = "IPPool"
PLURAL = "ippools"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CIDR: dict[str, Any] = {"format": "cidr"}  # one of the string formats kube-apiserver validates


class _CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _address(value: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _span(item: str) -> tuple[IPAddress, IPAddress]:
    """First and last address of an exclude entry: "10.0.0.5", "10.0.0.0/28" or "10.0.0.20-10.0.0.29"."""
    if "-" in item:
        start, _, end = item.partition("-")
        first, last = _address(start.strip()), _address(end.strip())
        if first.version != last.version or int(first) > int(last):
            raise ValueError(f"exclude {item}: start must not be above end (same family)")
        return first, last
    try:
        net = ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise ValueError(f"exclude {item!r} is not an address, CIDR or start-end span") from None
    return net[0], net[-1]


class IPRange(_CamelModel):
    start: str = Field(description="First allocatable address (inclusive).")
    end: str = Field(description="Last allocatable address (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> IPRange:
        start, end = _address(self.start), _address(self.end)
        if start.version != end.version or int(start) > int(end):
            raise ValueError(f"range {self.start}-{self.end}: start must not be above end (same family)")
        return self


class Route(_CamelModel):
    dst: str = Field(description="Destination CIDR, e.g. 10.200.0.0/16 or 0.0.0.0/0.", json_schema_extra=_CIDR)
    gw: str | None = Field(default=None, description="Next hop; the pool's gateway when unset.")

    @field_validator("dst")
    @classmethod
    def _cidr(cls, value: str) -> str:
        ipaddress.ip_network(value, strict=False)
        return value

    @field_validator("gw")
    @classmethod
    def _gw(cls, value: str | None) -> str | None:
        if value is not None:
            _address(value)
        return value


class IPPoolSpec(_CamelModel):
    subnet: str = Field(
        description="CIDR of the network, e.g. 192.168.100.0/24 or fd00:100::/64.", json_schema_extra=_CIDR
    )
    ranges: list[IPRange] = Field(
        default_factory=list, description="Allocatable spans inside the subnet; empty = the whole subnet."
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Addresses, CIDRs or start-end spans inside the subnet never handed out.",
    )
    gateway: str | None = Field(default=None, description="Gateway address inside the subnet; never allocated.")
    routes: list[Route] = Field(default_factory=list, description="Routes added in the pod for this network.")
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels (all must match) of the nodes that may allocate from the pool."
    )
    namespaces: list[str] | None = Field(
        default=None, description="Pod namespaces that may allocate from the pool; unset = all namespaces."
    )

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"subnet {value!r}: {exc}") from None
        return value

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.subnet)

    @model_validator(mode="after")
    def _inside_subnet(self) -> IPPoolSpec:
        net = self.network
        for r in self.ranges:
            if _address(r.start) not in net or _address(r.end) not in net:
                raise ValueError(f"range {r.start}-{r.end} is not inside subnet {self.subnet}")
        for item in self.exclude:
            first, last = _span(item)
            if first not in net or last not in net:
                raise ValueError(f"exclude {item} is not inside subnet {self.subnet}")
        if self.gateway is not None and _address(self.gateway) not in net:
            raise ValueError(f"gateway {self.gateway} is not inside subnet {self.subnet}")
        return self


class IPPoolStatus(_CamelModel):
    allocations: int = Field(default=0, ge=0, description="Addresses currently allocated from the pool.")
    capacity: int | None = Field(default=None, ge=0, description="Allocatable addresses in the pool.")


class IPPool(_CamelModel):
    """One object as stored in the API server (metadata kept as a plain mapping)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    crd_scope: ClassVar[str] = "Cluster"

    api_version: str = Field(default=f"{GROUP}/{VERSION}")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: IPPoolSpec
    status: IPPoolStatus | None = None
