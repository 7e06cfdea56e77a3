"""IPAM configuration: the reference host-local format, plus named pools defined once.

    "ipam": {"type": "railnet-ipam",
             "ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "gateway": "10.1.0.1"}],
                        [{"subnet": "fd00:1::/64"}]],
             "routes": [{"dst": "0.0.0.0/0"}], "exclude": ["10.1.0.20-10.1.0.29"]}
or  "ipam": {"type": "railnet-ipam", "pool": "rail0"}   (pool defined in the agent's pools dir)

Each entry of `ranges` is a range set: the attachment gets one address from each set, which is
how dual-stack works (one IPv4 set, one IPv6 set).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cni.spec.errors import INVALID_CONFIG, UNSUPPORTED_FIELD, CniError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subnet: str
    rangeStart: str | None = None
    rangeEnd: str | None = None
    gateway: str | None = None

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"subnet {v!r} is not a CIDR like 10.1.0.0/24") from None
        if net.num_addresses < 4 and net.version == 4:
            raise ValueError(f"subnet {v!r} is too small: use /30 or larger")
        return v

    @model_validator(mode="after")
    def _inside_subnet(self) -> Range:
        net = self.network
        for label in ("rangeStart", "rangeEnd", "gateway"):
            value = getattr(self, label)
            if value is None:
                continue
            try:
                addr = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{label} {value!r} is not an IP address") from None
            if addr not in net:
                raise ValueError(f"{label} {value} is outside subnet {self.subnet}")
        if int(self.first) > int(self.last):
            raise ValueError(f"rangeStart {self.first} is after rangeEnd {self.last}")
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
        return ipaddress.ip_address(self.rangeStart) if self.rangeStart else self.network[1]

    @property
    def last(self) -> IPAddress:
        if self.rangeEnd:
            return ipaddress.ip_address(self.rangeEnd)
        net = self.network
        return net[-2] if net.version == 4 else net[-1]  # never the IPv4 broadcast


class RouteConf(BaseModel):
    model_config = ConfigDict(extra="allow")

    dst: str
    gw: str | None = None

    @field_validator("dst")
    @classmethod
    def _dst(cls, v: str) -> str:
        ipaddress.ip_network(v, strict=False)
        return v


class PoolSpec(BaseModel):
    """What a pool is: range sets, exclusions and routes. Named pools and inline configs share it."""

    model_config = ConfigDict(extra="ignore")

    ranges: list[list[Range]] = Field(min_length=1)
    routes: list[RouteConf] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    dns: dict[str, Any] | None = None

    @field_validator("ranges")
    @classmethod
    def _one_family_per_set(cls, sets: list[list[Range]]) -> list[list[Range]]:
        for i, rs in enumerate(sets):
            if not rs:
                raise ValueError(f"range set {i} is empty")
            if len({r.network.version for r in rs}) > 1:
                raise ValueError(f"range set {i} mixes IPv4 and IPv6: put each family in its own set")
        return sets

    @field_validator("exclude")
    @classmethod
    def _exclude(cls, items: list[str]) -> list[str]:
        for item in items:
            parse_exclusion(item)
        return items

    def excluded(self) -> list[tuple[int, int]]:
        return [parse_exclusion(e) for e in self.exclude]


def parse_exclusion(item: str) -> tuple[int, int]:
    """'10.0.0.5', '10.0.0.0/28' or '10.0.0.5-10.0.0.9' as an inclusive integer interval."""
    try:
        if "-" in item:
            lo, hi = (ipaddress.ip_address(p.strip()) for p in item.split("-", 1))
            return int(lo), int(hi)
        if "/" in item:
            net = ipaddress.ip_network(item, strict=False)
            return int(net[0]), int(net[-1])
        addr = ipaddress.ip_address(item)
        return int(addr), int(addr)
    except ValueError:
        raise ValueError(f"exclude entry {item!r} is not an IP, CIDR or 'first-last' range") from None


class IpamConf(BaseModel):
    """The `ipam` section of a network config."""

    model_config = ConfigDict(extra="allow")

    type: str
    pool: str | None = None
    ranges: list[list[Range]] | None = None
    routes: list[RouteConf] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    dns: dict[str, Any] | None = None
    # host-local's legacy single-range form
    subnet: str | None = None
    rangeStart: str | None = None
    rangeEnd: str | None = None
    gateway: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> IpamConf:
        if self.subnet and not self.ranges:
            self.ranges = [[Range(subnet=self.subnet, rangeStart=self.rangeStart,
                                  rangeEnd=self.rangeEnd, gateway=self.gateway)]]
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
