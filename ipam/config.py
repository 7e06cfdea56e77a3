"""IPAM configuration: the reference host-local format in network configs, and the allocator's range sets.

    "ipam": {"type": "railnet-ipam",
             "ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "gateway": "10.1.0.1"}],
                        [{"subnet": "fd00:1::/64"}]],
             "routes": [{"dst": "0.0.0.0/0"}], "exclude": ["10.1.0.20-10.1.0.29"]}
or  "ipam": {"type": "railnet-ipam", "pool": "rail0"}   (an IPPool defined in the agent's pools dir)

Each entry of `ranges` is a range set: the attachment gets one address from each set, which is
how dual-stack works (one IPv4 set, one IPv6 set). `PoolSpec` is what the allocator works on; inline
ranges become one directly, a named pool (an IPPool, ipam/crd.py) is converted by `IPPoolSpec.to_pool_spec`.

Naming rule (cni.spec.model.WireModel): snake_case attributes, camelCase on the wire.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from cni.spec.errors import INVALID_CONFIG, UNSUPPORTED_FIELD, CniError
from cni.spec.model import WireModel

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Span = tuple[IPAddress, IPAddress]  # an inclusive address interval of one family

# Smallest subnets with an address left once the network address, the gateway and (IPv4) the
# broadcast are taken out; host-local draws the same line.
MIN_PREFIX_SPAN = {4: 2, 6: 2}  # host bits: /30 for IPv4, /126 for IPv6
_CIDR: dict[str, Any] = {"format": "cidr"}  # one of the string formats kube-apiserver validates


def parse_address(value: str, what: str = "") -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what + ' ' if what else ''}{value!r} is not an IP address") from None


def parse_subnet(value: str, strict: bool = False) -> IPNetwork:
    """A subnet large enough to allocate from (the same rule for inline ranges and IPPools)."""
    try:
        net = ipaddress.ip_network(value, strict=strict)
    except ValueError as exc:
        hint = f": {exc}" if strict and "/" in value else ""
        raise ValueError(f"subnet {value!r} is not a CIDR like 10.1.0.0/24 or fd00:1::/64{hint}") from None
    host_bits = net.max_prefixlen - net.prefixlen
    if host_bits < MIN_PREFIX_SPAN[net.version]:
        smallest = net.max_prefixlen - MIN_PREFIX_SPAN[net.version]
        raise ValueError(f"subnet {value} is too small to allocate from: IPv{net.version} needs "
                         f"/{smallest} or larger (network address and gateway are never handed out)")
    return net


def parse_exclusion(item: str) -> Span:
    """'10.0.0.5', '10.0.0.0/28' or '10.0.0.5-10.0.0.9' as its first and last address.

    The one parser of exclude entries, for inline configs and IPPools alike."""
    if "-" in item:
        start, _, end = item.partition("-")
        first = parse_address(start.strip(), f"exclude {item}:")
        last = parse_address(end.strip(), f"exclude {item}:")
        if first.version != last.version or int(first) > int(last):
            raise ValueError(f"exclude {item}: start must not be above end (same family)")
        return first, last
    try:
        net = ipaddress.ip_network(item.strip(), strict=False)
    except ValueError:
        raise ValueError(f"exclude entry {item!r} is not an IP, CIDR or 'first-last' range") from None
    return net[0], net[-1]


class Range(WireModel):
    """One host-local range: a subnet, optionally narrowed to [rangeStart, rangeEnd]."""

    subnet: str
    range_start: str | None = None
    range_end: str | None = None
    gateway: str | None = None

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        parse_subnet(v)
        return v

    @model_validator(mode="after")
    def _inside_subnet(self) -> Range:
        net = self.network
        for label, value in (("rangeStart", self.range_start), ("rangeEnd", self.range_end),
                             ("gateway", self.gateway)):
            if value is None:
                continue
            addr = parse_address(value, label)
            if addr not in net:
                raise ValueError(f"{label} {value} is outside subnet {self.subnet}")
            if label != "gateway" and (addr == net.network_address
                                       or (net.version == 4 and addr == net.broadcast_address)):
                raise ValueError(f"{label} {value} is the network or broadcast address of {self.subnet}")
        if int(self.first) > int(self.last):
            raise ValueError(f"rangeStart {self.first} is after rangeEnd {self.last}")
        if self.first == self.last == self.gateway_ip:
            raise ValueError(f"range {self.first}-{self.last} holds only the gateway: nothing to hand out")
        return self

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.subnet, strict=False)

    @property
    def gateway_ip(self) -> IPAddress | None:
        if self.gateway:
            return ipaddress.ip_address(self.gateway)
        return self.network[1]  # host-local's default: the subnet's first address

    @property
    def first(self) -> IPAddress:
        return ipaddress.ip_address(self.range_start) if self.range_start else self.network[1]

    @property
    def last(self) -> IPAddress:
        if self.range_end:
            return ipaddress.ip_address(self.range_end)
        net = self.network
        return net[-2] if net.version == 4 else net[-1]  # never the IPv4 broadcast

    def holds(self, addr: IPAddress) -> bool:
        return addr.version == self.network.version and int(self.first) <= int(addr) <= int(self.last)


class Route(WireModel):
    """A route handed to the pod (CNI 1.1 route object); the same model for configs and IPPools."""

    dst: str = Field(description="Destination CIDR, e.g. 10.200.0.0/16 or 0.0.0.0/0.", json_schema_extra=_CIDR)
    gw: str | None = Field(default=None, description="Next hop; the pool's gateway when unset.")
    mtu: int | None = Field(default=None, ge=0, description="Route MTU (CNI 1.1).")
    advmss: int | None = Field(default=None, ge=0, description="Advertised MSS (CNI 1.1).")
    priority: int | None = Field(default=None, ge=0, description="Route metric (CNI 1.1).")
    table: int | None = Field(default=None, ge=0, description="Routing table (CNI 1.1).")
    scope: int | None = Field(default=None, ge=0, le=255, description="Route scope (CNI 1.1).")

    @field_validator("dst")
    @classmethod
    def _dst(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"route dst {value!r} is not a CIDR") from None
        return value

    @field_validator("gw")
    @classmethod
    def _gw(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value, "route gw")
        return value


def check_range_set(ranges: list[Range], where: str) -> None:
    """One family per set and no overlapping ranges, or an address would belong to two ranges."""
    if not ranges:
        raise ValueError(f"{where} is empty")
    if len({r.network.version for r in ranges}) > 1:
        raise ValueError(f"{where} mixes IPv4 and IPv6: put each family in its own set")
    spans = sorted((int(r.first), int(r.last)) for r in ranges)
    for (_, hi), (lo, _) in zip(spans, spans[1:], strict=False):
        if lo <= hi:
            raise ValueError(f"{where} has overlapping ranges ({ipaddress.ip_address(lo)} is in two)")


class PoolSpec(WireModel):
    """What the allocator draws from: range sets, exclusions and routes (inline config or a converted IPPool)."""

    ranges: list[list[Range]] = Field(min_length=1)
    routes: list[Route] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    dns: dict[str, Any] | None = None
    conflict_probe: Literal["arp"] | None = None  # from a named pool (IPPool spec.conflictProbe)

    @field_validator("ranges")
    @classmethod
    def _sets(cls, sets: list[list[Range]]) -> list[list[Range]]:
        for i, rs in enumerate(sets):
            check_range_set(rs, f"range set {i}")
        return sets

    @field_validator("exclude")
    @classmethod
    def _exclude(cls, items: list[str]) -> list[str]:
        for item in items:
            parse_exclusion(item)
        return items

    def excluded(self) -> list[Span]:
        return [parse_exclusion(e) for e in self.exclude]


class IpamConf(WireModel):
    """The `ipam` section of a network config (host-local keys, or `pool` naming an IPPool)."""

    model_config = ConfigDict(extra="allow")

    type: str
    pool: str | None = None
    ranges: list[list[Range]] | None = None
    routes: list[Route] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    dns: dict[str, Any] | None = None
    # host-local's legacy single-range form
    subnet: str | None = None
    range_start: str | None = None
    range_end: str | None = None
    gateway: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> IpamConf:
        if self.subnet and not self.ranges:
            self.ranges = [[Range(subnet=self.subnet, range_start=self.range_start,
                                  range_end=self.range_end, gateway=self.gateway)]]
        if self.pool and self.ranges:
            raise ValueError("give either 'pool' (a named pool) or 'ranges', not both")
        if not self.pool and not self.ranges:
            raise ValueError("give 'ranges' (host-local format) or 'pool' (a named pool)")
        return self

    def inline_spec(self) -> PoolSpec:
        assert self.ranges is not None
        return PoolSpec(ranges=self.ranges, routes=self.routes, exclude=self.exclude, dns=self.dns)


def validation_error(what: str, exc: ValidationError) -> CniError:
    """Turn pydantic's report into one readable CNI error: code 2 for a field railnet does not
    know where the schema is closed (most often a typo), code 7 for a wrong value."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or what
        msg = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {msg}")
    unknown = all(err["type"] == "extra_forbidden" for err in exc.errors())
    return CniError(UNSUPPORTED_FIELD if unknown else INVALID_CONFIG,
                    f"unsupported field in {what}" if unknown else f"invalid {what}", "; ".join(problems))


def parse_ipam(raw: Any) -> IpamConf:
    if not isinstance(raw, dict):
        raise CniError(INVALID_CONFIG, "network config has no 'ipam' object", "add an ipam section with a 'type'")
    try:
        return IpamConf.model_validate(raw)
    except ValidationError as exc:
        raise validation_error("ipam config", exc) from None
