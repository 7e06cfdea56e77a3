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
  pool, ``networks`` the CNI networks (config ``name``), ``namespaces`` the pod namespaces. Unset means
  "any". The cluster store enforces nodes and networks (ipam/cluster.py).
- ``block_size`` is the prefix length of the per-node blocks (cluster store): a node claims one block
  at a time by creating an IPPoolBlock named after it, and allocates inside it without API calls.
- ``fixed_ranges`` are set aside for fixed IPs (IPReservation): never part of a node's block, so a
  reserved address can follow its owner to any node.
- ``rail`` is the index of the per-NIC rail the pool serves (informational, for selection by rail).

The agent's pools dir holds these objects (or their spec) as files; `IPPoolSpec.to_pool_spec` is the
one conversion to the allocator's host-local range sets.
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar, Literal

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

BLOCK_KIND = "IPPoolBlock"
BLOCK_PLURAL = "ippoolblocks"
RESERVATION_KIND = "IPReservation"
RESERVATION_PLURAL = "ipreservations"
POOL_LABEL = "railnet.io/pool"
NODE_LABEL = "railnet.io/node"
KEY_LABEL = "railnet.io/reservation-key"
DEFAULT_BLOCK_PREFIX = {4: 26, 6: 122}  # 64 addresses: a node's share before it claims another

_CIDR: dict[str, Any] = {"format": "cidr"}  # one of the string formats kube-apiserver validates

# Checked by the API server at apply time (CEL), with a message that says what to fix. The pydantic
# validators below say the same for pool files (and check ranges, which CEL's cost budget leaves out). Overlap between pools cannot be seen from one object:
# the cluster store refuses a pool that overlaps another (error 113) and `railnet ipam audit` reports it.
_POOL_RULES: list[Any] = [
    {"rule": "!isCIDR(self.subnet) || cidr(self.subnet) == cidr(self.subnet).masked()",
     "message": "spec.subnet has host bits set: write the network address, e.g. 10.1.0.0/24"},
    {"rule": "!isCIDR(self.subnet) || !has(self.gateway) || (isIP(self.gateway) && "
             "cidr(self.subnet).containsIP(self.gateway))",
     "message": "spec.gateway must be an address inside spec.subnet: fix it or leave it unset (= first address)"},
    {"rule": "!isCIDR(self.subnet) || !has(self.blockSize) || (self.blockSize >= cidr(self.subnet).prefixLength()"
             " && self.blockSize <= (cidr(self.subnet).ip().family() == 4 ? 32 : 128))",
     "message": "spec.blockSize must be a prefix length between the subnet's own and /32 (/128 for IPv6), so "
                "that blocks divide the subnet, e.g. 26 for blocks of 64 addresses"},
]


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
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _POOL_RULES})

    subnet: str = Field(
        description="CIDR of the network, e.g. 192.168.100.0/24 or fd00:100::/64 (at least /30 or /126).",
        max_length=64, json_schema_extra=_CIDR,
    )
    ranges: list[IPRange] = Field(
        default_factory=list, max_length=64,
        description="Allocatable spans inside the subnet; empty = the whole subnet.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Addresses, CIDRs or start-end spans inside the subnet never handed out.",
    )
    gateway: str | None = Field(
        default=None, max_length=64,
        description="Gateway address inside the subnet; never allocated. Unset = the subnet's first address.",
    )
    routes: list[Route] = Field(default_factory=list, description="Routes added in the pod for this network.")
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels (all must match) of the nodes that may allocate from the pool."
    )
    namespaces: list[str] | None = Field(
        default=None, description="Pod namespaces that may allocate from the pool; unset = all namespaces."
    )
    networks: list[str] | None = Field(
        default=None, description="CNI network names (config 'name') that may use the pool; unset = any."
    )
    block_size: int | None = Field(
        default=None, ge=0, le=128,
        description="Prefix length of the per-node blocks (cluster store); unset = /26 (IPv4) or /122 (IPv6).",
    )
    fixed_ranges: list[IPRange] = Field(
        default_factory=list, max_length=64,
        description="Spans kept for fixed IPs (IPReservation); never handed to a node's block.",
    )
    rail: int | None = Field(default=None, ge=0, description="Index of the NIC rail this pool serves.")
    conflict_probe: Literal["arp"] | None = Field(
        default=None,
        description="'arp': before an IPv4 address is handed out, ARP-probe it (RFC 5227) on the network's parent "
                    "NIC (config 'master'); an address another host answers for is quarantined and another tried.",
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
        for r in self.fixed_ranges:
            if parse_address(r.start) not in net or parse_address(r.end) not in net:
                raise ValueError(f"fixedRanges {r.start}-{r.end} is not inside subnet {self.subnet}")
        if self.block_size is not None and not net.prefixlen <= self.block_size <= net.max_prefixlen:
            raise ValueError(f"blockSize /{self.block_size} does not divide subnet {self.subnet}: use a prefix "
                             f"length between /{net.prefixlen} and /{net.max_prefixlen}")
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
        return PoolSpec(ranges=[self.range_set()], routes=self.routes, exclude=self.exclude,
                        conflict_probe=self.conflict_probe)


    @property
    def block_prefix(self) -> int:
        return self.block_size if self.block_size is not None else max(
            self.network.prefixlen, DEFAULT_BLOCK_PREFIX[self.network.version])


class IPPoolStatus(WireModel):
    allocations: int = Field(default=0, ge=0, description="Addresses currently allocated from the pool.")
    capacity: int | None = Field(default=None, ge=0, description="Allocatable addresses in the pool.")
    free: int | None = Field(default=None, ge=0, description="capacity - allocations.")
    blocks: int | None = Field(default=None, ge=0, description="Blocks claimed by nodes.")
    reserved: int | None = Field(default=None, ge=0, description="Fixed IPs held by reservations.")
    message: str | None = Field(default=None, description="Why the pool cannot be used, when it cannot.")


class BlockAllocation(WireModel):
    address: str
    container_id: str = Field(description="CNI_CONTAINERID of the attachment holding the address.")
    ifname: str
    pod: str | None = Field(default=None, description="namespace/name of the pod, when the runtime said.")


class IPPoolBlockSpec(WireModel):
    """A block of a pool claimed by one node (object name = `block_name(pool, cidr)`: create is the lock)."""

    pool: str = Field(description="The IPPool the block belongs to.")
    cidr: str = Field(description="The block, a CIDR inside the pool's subnet.", json_schema_extra=_CIDR)
    node: str = Field(default="", description="The node whose agent allocates in the block; '' for a fixed IP.")
    reservation: str | None = Field(default=None,
                                    description="namespace/name of the IPReservation a fixed-IP claim belongs to.")


class IPPoolBlockStatus(WireModel):
    allocated: int = Field(default=0, ge=0, description="Addresses in use, as last published by the node.")
    capacity: int | None = Field(default=None, ge=0, description="Allocatable addresses in the block.")
    allocations: list[BlockAllocation] | None = Field(default=None, description="Who holds each address.")
    published: str | None = Field(default=None, description="When the node last published (RFC 3339).")


class OwnerKey(WireModel):
    kind: str
    name: str
    uid: str
    replica_type: str = Field(default="", description="e.g. Worker, Master; '' for a StatefulSet or Job.")
    index: int = Field(ge=0, description="Replica index (pod index).")


class IPReservationSpec(WireModel):
    """A fixed IP of one job replica or StatefulSet pod; the owner reference ends it with its owner."""

    pool: str
    address: str
    owner: OwnerKey


def escape_cidr(cidr: str) -> str:
    """10.1.0.64/26 -> 10-1-0-64-26 (an object name: DNS subdomain characters only)."""
    return cidr.replace(".", "-").replace(":", "-").replace("/", "-").strip("-")


def block_name(pool: str, cidr: str) -> str:
    return f"{pool}-{escape_cidr(cidr)}"


class IPPool(WireModel):
    """One object as stored in the API server (metadata kept as a plain mapping)."""

    model_config = ConfigDict(extra="ignore")
    crd_scope: ClassVar[str] = "Cluster"

    api_version: str = Field(default=f"{GROUP}/{VERSION}")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: IPPoolSpec
    status: IPPoolStatus | None = None
