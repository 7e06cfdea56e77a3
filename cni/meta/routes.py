"""`default-route` of the networks annotation: which network carries the pod's default route.

Multus (v4.3.0, pkg/types/conf.go `CheckGatewayConfig`, pkg/multus/multus.go `CmdAdd`,
pkg/netutils/netutils.go `DeleteDefaultGW`/`SetDefaultGW`): once any selection has
`default-route`, more than one gateway per family in the whole pod is refused ("multus does not
support ECMP for default-route"); every other delegate's interface, the primary's included, loses
its default routes, and the selected interface gets one default route via each listed gateway.
The cached result is edited to match, so a later CHECK does not look for the removed routes.

railnet does the same, with two differences, both documented in docs/cni.md:
* an empty list (`"default-route": []`) takes the gateway from the network's own result (its
  IPAM's gateway) instead of leaving the pod without a default route; a network that then has no
  gateway is a clear error;
* only the family that was asked for is moved: an IPv4 `default-route` leaves the primary's IPv6
  default route alone (Multus's `DeleteDefaultGW` drops both families on a filtered interface).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from cni.linux.netns import NetNS, NetnsError
from cni.spec.errors import INVALID_CONFIG, KERNEL_REFUSED, CniError

MAIN_TABLE = 254
DEFAULT = {4: "0.0.0.0/0", 6: "::/0"}
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass(frozen=True)
class Choice:
    """The default route of one family: via `gateway` on the delegate at `index` (interface `ifname`)."""

    family: int
    index: int
    ifname: str
    network: str
    gateway: str


def check_requests(requests: list[tuple[str, list[str] | None]]) -> None:
    """Before anything runs: at most one explicit gateway per family over the whole pod.
    `requests` is (network, default-route list or None) per delegate, in plan order."""
    for family in (4, 6):
        asked = [(network, gw) for network, gws in requests for gw in gws or []
                 if ipaddress.ip_address(gw).version == family]
        if len(asked) > 1:
            raise CniError(INVALID_CONFIG, f"default-route: more than one IPv{family} gateway",
                           f"{', '.join(f'{gw} ({n})' for n, gw in asked)}: a pod has one default route per "
                           "family (no ECMP, as in Multus); keep default-route on one network")


def _result_gateways(result: dict[str, Any], ifname: str) -> list[str]:
    interfaces = result.get("interfaces") or []
    index = next((i for i, iface in enumerate(interfaces) if iface.get("name") == ifname), None)
    return [ip["gateway"] for ip in result.get("ips") or []
            if ip.get("gateway") and (index is None or ip.get("interface", index) == index)]


def choose(delegates: list[tuple[str, str, list[str] | None]], results: list[dict[str, Any]]) -> list[Choice]:
    """The default route per family from `delegates` ((network, ifname, default-route) in plan order)
    and their results; empty when no selection asked for one."""
    chosen: dict[int, Choice] = {}
    for index, ((network, ifname, gateways), result) in enumerate(zip(delegates, results, strict=True)):
        if gateways is None:
            continue
        picked = list(gateways)
        if not picked:  # []: the network's own gateway, one per family
            seen: set[int] = set()
            for gw in _result_gateways(result, ifname):
                version = ipaddress.ip_address(gw).version
                if version not in seen:
                    seen.add(version)
                    picked.append(gw)
            if not picked:
                raise CniError(INVALID_CONFIG, f"network {network} ({ifname}) has default-route but no gateway",
                               "its result names no gateway: list one in the selection "
                               "(\"default-route\": [\"10.1.0.1\"]) or give the network's IPAM a gateway")
        for gw in picked:
            family = ipaddress.ip_address(gw).version
            other = chosen.get(family)
            if other is not None:
                raise CniError(INVALID_CONFIG, f"default-route: more than one IPv{family} gateway",
                               f"{other.gateway} ({other.network}) and {gw} ({network}): a pod has one default "
                               "route per family; keep default-route on one network")
            chosen[family] = Choice(family, index, ifname, network, gw)
    return list(chosen.values())


def edit_result(result: dict[str, Any], family: int, gateway: str | None) -> dict[str, Any]:
    """The result as the pod now is: the family's default routes dropped, and one via `gateway` added."""
    default = ipaddress.ip_network(DEFAULT[family])
    routes = [r for r in result.get("routes") or []  # other tables (a NIC's policy table) are not the pod's default
              if r.get("table", MAIN_TABLE) != MAIN_TABLE
              or ipaddress.ip_network(r.get("dst", "0.0.0.0/32"), strict=False) != default]
    if gateway is not None:
        routes.append({"dst": DEFAULT[family], "gw": gateway})
    out = dict(result)
    if routes or "routes" in result:
        out["routes"] = routes
    return out


def apply(netns: str, ifnames: list[str], choices: list[Choice]) -> None:
    """In the pod: each chosen family's default routes (main table) leave every delegate interface
    in `ifnames`; then the chosen interface gets its default route via the gateway."""
    try:
        with NetNS(netns) as ns:
            own = os.stat("/proc/self/ns/net")
            theirs = os.fstat(ns.fd)
            if (own.st_dev, own.st_ino) == (theirs.st_dev, theirs.st_ino):
                raise CniError(INVALID_CONFIG, "default-route: refused in the agent's own network namespace",
                               f"{netns} is the host's namespace; default-route only changes a pod's routes")
            ipr = ns.ipr
            indexes = {}
            for name in ifnames:
                found = ipr.link_lookup(ifname=name)
                if found:
                    indexes[name] = found[0]
            for choice in choices:
                family = FAMILY[choice.family]
                for msg in ipr.get_routes(family=family, table=MAIN_TABLE):
                    if msg["dst_len"] != 0 or msg.get_attr("RTA_OIF") not in indexes.values():
                        continue
                    fields = {"family": family, "table": MAIN_TABLE, "dst_len": 0,
                              "oif": msg.get_attr("RTA_OIF")}
                    for key, attr in (("gateway", "RTA_GATEWAY"), ("priority", "RTA_PRIORITY")):
                        if msg.get_attr(attr) is not None:
                            fields[key] = msg.get_attr(attr)
                    try:
                        ipr.route("del", **fields)
                    except Exception as exc:
                        if getattr(exc, "code", None) != 3:  # ESRCH: gone already
                            raise CniError(KERNEL_REFUSED, f"default-route: cannot remove the default route on "
                                           f"interface {fields['oif']}", str(exc)) from None
                oif = indexes.get(choice.ifname)
                if oif is None:
                    raise CniError(INVALID_CONFIG, f"network {choice.network}: interface {choice.ifname} "
                                   "is not in the pod", "its delegate returned success without creating it")
                try:
                    ipr.route("add", family=family, dst=DEFAULT[choice.family], gateway=choice.gateway, oif=oif,
                              table=MAIN_TABLE)
                except Exception as exc:
                    code = getattr(exc, "code", None)
                    if code == 17:  # EEXIST: already there, as Multus ignores it
                        continue
                    raise CniError(KERNEL_REFUSED,
                                   f"network {choice.network}: cannot set the default route via {choice.gateway} "
                                   f"on {choice.ifname}",
                                   f"{exc}; the gateway must be on one of {choice.ifname}'s subnets") from None
    except NetnsError as exc:
        raise CniError(KERNEL_REFUSED, "default-route: cannot enter the pod's network namespace", str(exc)) from None
