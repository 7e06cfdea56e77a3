"""Which CNI versions railnet speaks, and conversion of results between them."""

from __future__ import annotations

import ipaddress
from typing import Any

from cni.spec.errors import INCOMPATIBLE_VERSION, CniError

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED[-1]

# Fields that only exist from 1.1.0 on; older results must not carry them.
_IFACE_1_1_ONLY = ("mtu", "socketPath", "pciID")
_ROUTE_1_1_ONLY = ("mtu", "advmss", "priority", "table", "scope")


def require_supported(version: str | None) -> str:
    if not version:
        raise CniError(INCOMPATIBLE_VERSION, "cniVersion is missing from the network config",
                       f"set cniVersion to one of {', '.join(SUPPORTED)}")
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"unsupported cniVersion {version!r}",
                       f"railnet supports {', '.join(SUPPORTED)}")
    return version


def version_key(version: str) -> tuple[int, ...]:
    """'1.0.0' -> (1, 0, 0): versions compare as tuples, never as strings."""
    return tuple(int(p) for p in version.split("."))


# What each spec version can express (like libcni's SpecVersionHas* test predicates).
def has_ip_version_field(version: str) -> bool:
    """0.3.x and 0.4.0 results name each IP's family ('version': '4'); 1.0.0 dropped it."""
    return version_key(version) < (1, 0, 0)


def has_route_table(version: str) -> bool:
    """1.1.0 added route 'table', 'scope', 'mtu', 'advmss', 'priority' and interface 'mtu' etc."""
    return version_key(version) >= (1, 1, 0)


def has_check(version: str) -> bool:
    """CHECK exists from 0.4.0 on."""
    return version_key(version) >= (0, 4, 0)


def has_gc_and_status(version: str) -> bool:
    return version_key(version) >= (1, 1, 0)


def convert_result(result: dict[str, Any], to_version: str) -> dict[str, Any]:
    """Convert a result in railnet's canonical (1.1.0) shape to the version the caller asked for."""
    out: dict[str, Any] = {"cniVersion": to_version}
    old = not has_route_table(to_version)
    legacy = has_ip_version_field(to_version)
    if "interfaces" in result:
        out["interfaces"] = [
            {k: v for k, v in iface.items() if not (old and k in _IFACE_1_1_ONLY)}
            for iface in result["interfaces"]
        ]
    ips = []
    for ip in result.get("ips", []):
        entry = {k: v for k, v in ip.items() if k != "version"}
        if legacy:  # 0.3.x / 0.4.0 name the family explicitly
            entry = {"version": str(ipaddress.ip_interface(ip["address"]).version), **entry}
        ips.append(entry)
    if ips or "ips" in result:
        out["ips"] = ips
    if "routes" in result:
        # Before 1.1.0 a route has no table: a policy-table route would read as a main-table one.
        routes = [r for r in result["routes"] if not (old and "table" in r)]
        out["routes"] = [{k: v for k, v in r.items() if not (old and k in _ROUTE_1_1_ONLY)} for r in routes]
    out["dns"] = result.get("dns") or {}  # the reference plugins always emit the key
    return out


def canonical_result(result: dict[str, Any]) -> dict[str, Any]:
    """Read a result of any supported version (e.g. a prevResult) into the canonical shape."""
    out = dict(result)
    out["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in result.get("ips", [])]
    out["cniVersion"] = LATEST
    return out
