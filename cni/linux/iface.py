"""Configuring an interface inside a pod's namespace from an IPAM result, the way the reference
plugins' ConfigureIface does: sysctls, addresses, link up, routes, then per-NIC policy routing.

Shared by every attachment plugin (macvlan today, SR-IOV VFs next). Each step that leaves state
outliving the link (policy rules) registers its undo with the caller's Rollback before the next
step runs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from cni.linux.netns import NetNS
from cni.linux.rtnl import RT_SCOPE_LINK, RtnlError
from cni.spec.errors import INVALID_CONFIG, KERNEL_REFUSED, CniError
from cni.spec.rollback import Rollback

# Several NICs of one pod often sit on one subnet (one per rail). Without these, the kernel
# answers ARP for any local address on any NIC and drops replies arriving on the "wrong" NIC.
DEFAULT_SYSCTLS = {
    "arp_notify": "1",    # gratuitous ARP when the link comes up: peers learn the new MAC at once
    "arp_ignore": "1",    # answer ARP only for addresses configured on the receiving interface
    "arp_announce": "2",  # source ARP requests from the outgoing interface's own address
    "rp_filter": "2",     # loose reverse-path check: asymmetric multi-NIC paths are legitimate
}
DEFAULT_SYSCTLS_V6 = {
    "ndisc_notify": "1",
    "optimistic_dad": "1",  # use the address during DAD instead of waiting ~1-2 s for it to settle
    "use_optimistic": "1",
}
SYSCTL_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SYSCTL_VALUE = re.compile(r"^-?[0-9]{1,10}$")  # every per-interface IPv4 knob is an integer


def netlink(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One netlink request; a refusal becomes a CNI error that names the step."""
    try:
        return call(*args, **kwargs)
    except RtnlError as exc:
        raise CniError(KERNEL_REFUSED, f"kernel refused to {what}", f"{exc.strerror} (errno {exc.errno})") from None


def check_sysctl_overrides(overrides: dict[str, str]) -> None:
    """Before any side effect: keys are bare per-interface knob names, values integers."""
    for key, value in overrides.items():
        if not SYSCTL_KEY.fullmatch(key):
            raise CniError(INVALID_CONFIG, f"invalid sysctl key {key!r}",
                           "'sysctl' takes per-interface IPv4 knob names such as arp_ignore")
        if not SYSCTL_VALUE.fullmatch(str(value)):
            raise CniError(INVALID_CONFIG, f"invalid value {value!r} for sysctl {key}", "use an integer")


def set_sysctls(ns: NetNS, ifname: str, ips: list[dict[str, Any]], overrides: dict[str, str]) -> None:
    settings = [(("ipv4", "conf", ifname, k), v) for k, v in {**DEFAULT_SYSCTLS, **overrides}.items()]
    if any(ipaddress.ip_interface(ip["address"]).version == 6 for ip in ips):
        settings += [(("ipv6", "conf", ifname, k), v) for k, v in DEFAULT_SYSCTLS_V6.items()]
    for parts, value in settings:
        name = "net." + ".".join(parts)
        try:
            ns.write_sysctl(parts, value)
        except FileNotFoundError:
            raise CniError(INVALID_CONFIG, f"unknown sysctl {name}",
                           "'sysctl' takes per-interface IPv4 knob names such as arp_ignore") from None
        except OSError as exc:
            raise CniError(KERNEL_REFUSED, f"kernel refused sysctl {name}={value}", exc.strerror or "") from None


def configure_iface(ns: NetNS, index: int, ifname: str, ipam_result: dict[str, Any],
                    sysctls: dict[str, str], policy_table: int | None, rollback: Rollback) -> list[dict[str, Any]]:
    """Addresses, up, routes (and a policy table when `policy_table` is set); returns the routes
    to report. The link itself is the caller's (its undo removes addresses and table routes)."""
    ips = ipam_result.get("ips", [])
    set_sysctls(ns, ifname, ips, sysctls)
    for ip in ips:
        iface = ipaddress.ip_interface(ip["address"])
        netlink(f"add address {iface}", ns.rtnl.add_address, index, iface)
    netlink("bring the interface up", ns.rtnl.set_up, index)

    gateways = {ipaddress.ip_interface(ip["address"]).version: ip["gateway"] for ip in ips if ip.get("gateway")}
    routes = []
    for route in ipam_result.get("routes", []):
        dst = ipaddress.ip_network(route["dst"], strict=False)
        gw = route.get("gw") or gateways.get(dst.version)
        netlink(f"add route {dst} via {gw}", ns.rtnl.add_route, dst, index, gateway=gw)
        routes.append(dict(route))  # reported as configured; installed via the family's gateway
    if policy_table is not None:
        routes += policy_routes(ns, index, ips, policy_table, rollback)
    return routes


def policy_routes(ns: NetNS, index: int, ips: list[dict[str, Any]], table: int,
                  rollback: Rollback) -> list[dict[str, Any]]:
    """Traffic sourced from this NIC's address leaves through this NIC (one table per NIC).

    Routes in the table vanish with the link; rules do not, so each rule gets its undo.
    """
    out: list[dict[str, Any]] = []
    for ip in ips:
        iface = ipaddress.ip_interface(ip["address"])
        v4 = iface.version == 4
        # IPv6 refuses a preferred source that is still in DAD; the source rule pins the NIC anyway.
        scope = RT_SCOPE_LINK if v4 else 0
        netlink(f"add route {iface.network} to table {table}", ns.rtnl.add_route, iface.network, index,
                table=table, prefsrc=str(iface.ip) if v4 else None, scope=scope)
        out.append({"dst": str(iface.network), "table": table, **({"scope": scope} if v4 else {})})
        if ip.get("gateway"):
            default = ipaddress.ip_network("0.0.0.0/0" if v4 else "::/0")
            netlink(f"add default route via {ip['gateway']} to table {table}", ns.rtnl.add_route, default,
                    index, gateway=ip["gateway"], table=table)
            out.append({"dst": str(default), "gw": ip["gateway"], "table": table})
        src = str(iface.ip)
        # Registered before the step: a rule the kernel created just before a lost reply is
        # still removed (deleting a missing rule is harmless).
        rollback.push(f"rule from {src}", lambda src=src: ns.rtnl.delete_rule(src, table, table))  # type: ignore[misc]
        netlink(f"add rule from {src} lookup {table}", ns.rtnl.add_rule, src, table, table)
    return out
