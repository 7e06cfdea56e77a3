"""The IPPool custom resource (railnet.io/v1alpha1): the cluster-side description of an address pool.

These pydantic models are the single owner of the IPPool schema: `python -m railnet.dev.crdgen` turns them
into deploy/crds/ippools.railnet.io.yaml, and the IPAM code parses the objects it reads with them.
Python attributes are snake_case; the Kubernetes form is camelCase (``model_dump(by_alias=True)``).

Semantics:
- ``subnet`` is the network the addresses belong to (prefix length = the interface's prefix).
- ``ranges`` restrict allocation to [start, end] spans inside the subnet; empty = the whole subnet
  minus the network address, the broadcast address (IPv4) and the gateway.
- ``gateway`` unset = the subnet's first address (host-local's default); it is never handed out.
- ``exclude`` removes single addresses, CIDRs or ``start-end`` spans from what the ranges give.
- ``node_selector`` (label equality, like a pod's nodeSelector) limits the nodes that may draw from the
  pool; ``namespaces`` limits the pod namespaces. Unset means "any". (Not enforced by the node IPAM yet.)

The agent's pools dir holds these objects (or their spec) as files; `IPPoolSpec.to_pool_spec` is the
one conversion to the allocator's host-local range sets.
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from cni.spec.model import WireModel
from ipam.config import (
    IPNetwork,
    PoolSpec,
    Range,
    Route,
    check_range_set,
    parse_address,
    parse_exclusion,
    parse_subnet,
)

GROUP = "railnet.io"
VERSION = "v1alpha1"
KIND = "IPPool"
PLURAL = "ippools"

_CIDR: dict[str, Any] = {"format": "cidr"}  # one of the string formats kube-apiserver validates


class IPRange(WireModel):
    start: str = Field(description="First allocatable address (inclusive).")
    end: str = Field(description="Last allocatable address (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> IPRange:
        start, end = parse_address(self.start, "range start"), parse_address(self.end, "range end")
        if start.version != end.version or int(start) > int(end):
            raise ValueError(f"range {self.start}-{self.end}: start must not be above end (same family)")
        return self


class IPPoolSpec(WireModel):
    subnet: str = Field(
        description="CIDR of the network, e.g. 192.168.100.0/24 or fd00:100::/64 (at least /30 or /126).",
        json_schema_extra=_CIDR,
    )
    ranges: list[IPRange] = Field(
        default_factory=list, description="Allocatable spans inside the subnet; empty = the whole subnet."
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Addresses, CIDRs or start-end spans inside the subnet never handed out.",
    )
    gateway: str | None = Field(
        default=None,
        description="Gateway address inside the subnet; never allocated. Unset = the subnet's first address.",
    )
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
        parse_subnet(value, strict=True)
        return value

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.subnet)

    @model_validator(mode="after")
    def _inside_subnet(self) -> IPPoolSpec:
        net = self.network
        for r in self.ranges:
            if parse_address(r.start) not in net or parse_address(r.end) not in net:
                raise ValueError(f"range {r.start}-{r.end} is not inside subnet {self.subnet}")
        for item in self.exclude:
            first, last = parse_exclusion(item)
            if first not in net or last not in net:
                raise ValueError(f"exclude {item} is not inside subnet {self.subnet}")
        if self.gateway is not None and parse_address(self.gateway, "gateway") not in net:
            raise ValueError(f"gateway {self.gateway} is not inside subnet {self.subnet}")
        check_range_set(self.range_set(), "ranges")
        return self

    def range_set(self) -> list[Range]:
        """The pool as one host-local range set: one Range per span (or the whole subnet)."""
        spans: list[IPRange | None] = list(self.ranges) or [None]
        out = []
        for span in spans:
            try:
                out.append(Range(subnet=self.subnet, gateway=self.gateway,
                                 range_start=span.start if span else None, range_end=span.end if span else None))
            except ValidationError as exc:
                raise ValueError("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())) from None
        return out

    def to_pool_spec(self) -> PoolSpec:
        """The one conversion from the pool schema (IPPool) to what the allocator draws from."""
        return PoolSpec(ranges=[self.range_set()], routes=self.routes, exclude=self.exclude)


class IPPoolStatus(WireModel):
    allocations: int = Field(default=0, ge=0, description="Addresses currently allocated from the pool.")
    capacity: int | None = Field(default=None, ge=0, description="Allocatable addresses in the pool.")


class IPPool(WireModel):
    """One object as stored in the API server (metadata kept as a plain mapping)."""

    model_config = ConfigDict(extra="ignore")
    crd_scope: ClassVar[str] = "Cluster"

    api_version: str = Field(default=f"{GROUP}/{VERSION}")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: IPPoolSpec
    status: IPPoolStatus | None = None
