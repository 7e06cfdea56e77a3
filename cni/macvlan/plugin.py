"""railnet-macvlan: a macvlan interface on a RoCE NIC, created directly inside the pod netns.

ADD order: record intent -> IPAM -> create the link in the target netns under its final name ->
sysctls -> addresses -> up -> routes -> per-NIC policy routing -> record result.
Each step pushes its undo; any failure runs the undos in reverse, so a failed ADD leaves no
link, no address allocation and no record behind.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pyroute2 import IPRoute

from cni.attachments import Attachment, AttachmentStore
from cni.ipam_calls import IpamCalls
from cni.linux.netns import NetNS
from cni.linux.nic import resolve_master
from cni.linux.rtnl import RT_SCOPE_LINK, Link, Rtnl, RtnlError
from cni.spec.errors import (
    CHECK_FAILED,
    INTERFACE_EXISTS,
    INVALID_CONFIG,
    KERNEL_REFUSED,
    LIMITED_CONNECTIVITY,
    MASTER_NOT_FOUND,
    NOT_AVAILABLE,
    CniError,
)
from cni.spec.request import CniRequest
from cni.spec.versions import canonical_result
from ipam.config import validation_error
from ipam.plugin import valid_attachments

log = logging.getLogger("railnet.macvlan")
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")

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


class MacvlanConf(BaseModel):
    model_config = ConfigDict(extra="allow")

    cniVersion: str
    name: str
    type: str
    master: str | None = None
    pciAddress: str | None = None
    rdmaDevice: str | None = None
    mode: Literal["bridge", "private", "vepa", "passthru"] = "bridge"
    mtu: int | None = Field(default=None, ge=68, le=65535)
    mac: str | None = None
    ipam: dict[str, Any] | None = None
    policyRouting: bool = True
    routeTableBase: int = Field(default=1000, ge=1, le=0x7FFF0000)
    sysctl: dict[str, str] = Field(default_factory=dict)
    runtimeConfig: dict[str, Any] = Field(default_factory=dict)
    prevResult: dict[str, Any] | None = None

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        if v is not None and not _MAC.match(v):
            raise ValueError(f"mac {v!r} is not a MAC address like 02:00:00:00:00:01")
        return v

    def wanted_mac(self) -> str | None:
        mac = self.runtimeConfig.get("mac") or self.mac  # the 'mac' capability wins over the config
        if mac is not None and not _MAC.match(str(mac)):
            raise CniError(INVALID_CONFIG, f"runtimeConfig.mac {mac!r} is not a MAC address")
        if mac and self.mode == "passthru":
            # A passthru macvlan shares the NIC's MAC; setting one would rewrite the host NIC's address.
            raise CniError(INVALID_CONFIG, "a MAC address cannot be set in passthru mode",
                           "drop 'mac' (the interface takes the NIC's own MAC) or use another mode")
        return str(mac).lower() if mac else None


def parse_conf(config: dict[str, Any]) -> MacvlanConf:
    try:
        return MacvlanConf.model_validate(config)
    except ValidationError as exc:
        raise validation_error("railnet-macvlan config", exc) from None


def _nl(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One netlink request; a refusal becomes a CNI error that names the step."""
    try:
        return call(*args, **kwargs)
    except RtnlError as exc:
        raise CniError(KERNEL_REFUSED, f"kernel refused to {what}", f"{exc.strerror} (errno {exc.errno})") from None


class MacvlanPlugin:
    def __init__(self, attachments: AttachmentStore, ipam: IpamCalls, sysfs: Path) -> None:
        self.attachments = attachments
        self.ipam = ipam
        self.sysfs = sysfs
        self._local = threading.local()

    @property
    def host(self) -> Rtnl:
        """A netlink socket in the agent's own namespace (where the NICs live), one per thread,
        so concurrent requests never wait on each other's socket."""
        rtnl: Rtnl | None = getattr(self._local, "rtnl", None)
        if rtnl is None:
            rtnl = self._local.rtnl = Rtnl()
        return rtnl

    # ---- ADD ------------------------------------------------------------------------------
    def add(self, req: CniRequest) -> dict[str, Any]:
        conf = parse_conf(req.config)
        mac = conf.wanted_mac()
        if conf.ipam is None:
            raise CniError(INVALID_CONFIG, "railnet-macvlan needs an 'ipam' section",
                           'e.g. "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}]]}')
        master_index = self._master(conf).index
        if self.attachments.get(req.container_id, req.ifname):
            raise CniError(INTERFACE_EXISTS, f"attachment {req.container_id}/{req.ifname} already exists",
                           "DEL it before adding it again")
        undo: list[Callable[[], object]] = []
        with NetNS(req.netns) as ns:
            if not self.attachments.begin(req.container_id, req.ifname, conf.name, req.netns, req.config):
                raise CniError(INTERFACE_EXISTS, f"attachment {req.container_id}/{req.ifname} already exists",
                               "DEL it before adding it again")
            undo.append(lambda: self.attachments.drop(req.container_id, req.ifname))
            try:
                result = self._add_steps(req, conf, ns, master_index, mac, undo)
            except BaseException:
                for step in reversed(undo):
                    try:
                        step()
                    except Exception as undo_exc:  # keep undoing: leaving less behind is the point
                        log.warning("undo step failed: %s", undo_exc)
                raise
        self.attachments.finish(req.container_id, req.ifname, result)
        return result

    def _add_steps(self, req: CniRequest, conf: MacvlanConf, ns: NetNS, master_index: int,
                   mac: str | None, undo: list[Callable[[], object]]) -> dict[str, Any]:
        undo.append(lambda: self.ipam.delete(req, req.config))
        ipam_result = self.ipam.add(req, req.config)

        # Created under its final name straight in the pod's namespace: the kernel checks the name
        # there, not on the host, so no temporary name and rename (2-3 ms) are needed.
        attrs: dict[str, Any] = {"ifname": req.ifname, "kind": "macvlan", "link": master_index,
                                 "macvlan_mode": conf.mode, "net_ns_fd": ns.fd}
        if mac:
            attrs["address"] = mac
        if conf.mtu:
            attrs["mtu"] = conf.mtu
        try:
            self.host.add_macvlan(req.ifname, master_index, conf.mode, ns.fd, conf.mtu, mac)
        except RtnlError as exc:
            if exc.errno == errno.EEXIST:
                raise CniError(INTERFACE_EXISTS, f"interface {req.ifname} already exists in {req.netns}",
                               "choose another CNI_IFNAME or remove the interface") from None
            raise CniError(KERNEL_REFUSED, f"kernel refused to create a {conf.mode} macvlan on parent "
                           f"#{master_index}", f"{exc.strerror} (errno {exc.errno})") from None
        link = ns.rtnl.link(req.ifname)
        assert link is not None
        index = link.index
        undo.append(lambda: ns.rtnl.delete_link(index))

        ips = ipam_result.get("ips", [])
        settings = {f"ipv4.conf.{req.ifname}.{k}": v for k, v in {**DEFAULT_SYSCTLS, **conf.sysctl}.items()}
        if any(ipaddress.ip_interface(ip["address"]).version == 6 for ip in ips):
            settings.update({f"ipv6.conf.{req.ifname}.{k}": v for k, v in DEFAULT_SYSCTLS_V6.items()})
        for key, value in settings.items():
            try:
                ns.sysctl(key, value)
            except FileNotFoundError:
                raise CniError(INVALID_CONFIG, f"unknown sysctl net.{key}",
                               "'sysctl' takes per-interface IPv4 keys such as arp_ignore") from None
            except OSError as exc:
                raise CniError(KERNEL_REFUSED, f"kernel refused sysctl net.{key}={value}", exc.strerror or "") from None
        for ip in ips:
            iface = ipaddress.ip_interface(ip["address"])
            _nl(f"add address {iface}", ns.rtnl.add_address, index, iface)
        _nl("bring the interface up", ns.rtnl.set_up, index)

        gateways = {ipaddress.ip_interface(ip["address"]).version: ip["gateway"] for ip in ips if ip.get("gateway")}
        routes = []
        for route in ipam_result.get("routes", []):
            dst = ipaddress.ip_network(route["dst"], strict=False)
            gw = route.get("gw") or gateways.get(dst.version)
            _nl(f"add route {dst} via {gw}", ns.rtnl.add_route, dst, index, gateway=gw)
            routes.append(dict(route))  # reported as configured; installed via the family's gateway
        if conf.policyRouting:
            routes += self._policy_routes(ns, index, ips, conf.routeTableBase + index, undo)

        iface_result: dict[str, Any] = {"name": req.ifname, "mac": link.mac, "mtu": link.mtu, "sandbox": req.netns}
        mine = {"interfaces": [iface_result], "ips": [dict(ip) for ip in ips], "routes": routes,
                "dns": ipam_result.get("dns") or {}}
        return merge_prev(req.config.get("prevResult"), mine)

    @staticmethod
    def _policy_routes(ns: NetNS, index: int, ips: list[dict[str, Any]], table: int,
                       undo: list[Callable[[], object]]) -> list[dict[str, Any]]:
        """Traffic sourced from this NIC's address leaves through this NIC (one table per NIC).

        Routes in the table vanish with the link; rules do not, so each rule gets its undo.
        """
        out: list[dict[str, Any]] = []
        for ip in ips:
            iface = ipaddress.ip_interface(ip["address"])
            v4 = iface.version == 4
            # IPv6 refuses a preferred source that is still in DAD; the source rule pins the NIC anyway.
            scope = RT_SCOPE_LINK if v4 else 0
            _nl(f"add route {iface.network} to table {table}", ns.rtnl.add_route, iface.network, index,
                table=table, prefsrc=str(iface.ip) if v4 else None, scope=scope)
            out.append({"dst": str(iface.network), "table": table, **({"scope": scope} if v4 else {})})
            if ip.get("gateway"):
                default = ipaddress.ip_network("0.0.0.0/0" if v4 else "::/0")
                _nl(f"add default route via {ip['gateway']} to table {table}", ns.rtnl.add_route, default, index,
                    gateway=ip["gateway"], table=table)
                out.append({"dst": str(default), "gw": ip["gateway"], "table": table})
            src = str(iface.ip)
            _nl(f"add rule from {src} lookup {table}", ns.rtnl.add_rule, src, table, table)
            undo.append(lambda src=src: ns.rtnl.delete_rule(src, table, table))  # type: ignore[misc]
        return out

    def _master(self, conf: MacvlanConf) -> Link:
        """The parent NIC. One lookup by name; the full link list only to explain a miss."""
        name = resolve_master(self.sysfs, conf.master, conf.pciAddress, conf.rdmaDevice)
        link = self.host.link(name)
        if link is None:
            with IPRoute() as ipr:
                names = sorted(str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links())
            raise CniError(MASTER_NOT_FOUND, f"parent NIC {name!r} not found on this node",
                           f"no such network device; interfaces here: {', '.join(names[:12]) or 'none'}")
        return link

    # ---- DEL ------------------------------------------------------------------------------
    def delete(self, req: CniRequest) -> None:
        record = self.attachments.get(req.container_id, req.ifname)
        config = record.config if record else req.config  # the cached config survives config changes
        netns = record.netns if record else req.netns
        self._remove_link(netns, req.ifname, recorded_rules(record))
        self.ipam.delete(req, config)
        self.attachments.drop(req.container_id, req.ifname)

    def _remove_link(self, netns: str, ifname: str, rules: list[tuple[str, int]]) -> None:
        """Delete our macvlan and its policy rules; `rules` are (source IP, table) from the record."""
        try:
            ns = NetNS(netns) if netns else None
        except FileNotFoundError:
            ns = None  # the netns is gone and took the link and its rules with it
        if ns is None:
            return
        with ns:
            addresses: set[str] = set()
            link = ns.rtnl.link(ifname)
            if link is not None and link.kind == "macvlan":  # never delete an interface railnet did not make
                if not rules:  # no record (a crash before it was written): read the addresses
                    addresses = {a.get_attr("IFA_ADDRESS") for a in ns.ipr.get_addr(index=link.index)}
                ns.rtnl.delete_link(link.index)
            # Rules outlive the link. With a record each is known; without one, search the rule list.
            for src, table in rules or self._rules_from(ns, addresses):
                try:
                    ns.rtnl.delete_rule(src, table, table)
                except RtnlError as exc:
                    if exc.errno != errno.ENOENT:
                        raise

    @staticmethod
    def _rules_from(ns: NetNS, addresses: set[str]) -> list[tuple[str, int]]:
        """Our rules are 'from <ip> lookup T' at priority T."""
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for rule in ns.ipr.get_rules(family=family):
                src, table = rule.get_attr("FRA_SRC"), rule.get_attr("FRA_TABLE")
                if src in addresses and table == rule.get_attr("FRA_PRIORITY"):
                    out.append((src, table))
        return out

    # ---- CHECK ----------------------------------------------------------------------------
    def check(self, req: CniRequest) -> None:
        record = self.attachments.get(req.container_id, req.ifname)
        if record is None or record.state != "added" or record.result is None:
            raise CniError(CHECK_FAILED, f"no attachment {req.container_id}/{req.ifname} is recorded",
                           "ADD it first")
        expected = record.result
        prev = req.config.get("prevResult")
        if isinstance(prev, dict):
            names = [i.get("name") for i in canonical_result(prev).get("interfaces", [])]
            if req.ifname not in names:
                raise CniError(CHECK_FAILED, f"prevResult does not list interface {req.ifname}")
        with NetNS(req.netns) as ns:
            found = ns.ipr.link_lookup(ifname=req.ifname)
            if not found:
                raise CniError(CHECK_FAILED, f"interface {req.ifname} is missing from {req.netns}",
                               "it was removed after ADD; DEL and ADD the attachment again")
            link = ns.ipr.get_links(found[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if kind != "macvlan":
                raise CniError(CHECK_FAILED, f"interface {req.ifname} is a {kind}, not a macvlan")
            mine = next(i for i in expected["interfaces"] if i["name"] == req.ifname)
            if link.get_attr("IFLA_ADDRESS") != mine["mac"]:
                raise CniError(CHECK_FAILED, f"interface {req.ifname} has MAC {link.get_attr('IFLA_ADDRESS')}, "
                               f"expected {mine['mac']}")
            have = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ns.ipr.get_addr(index=found[0])}
            for ip in expected["ips"]:
                if ip["address"] not in have:
                    raise CniError(CHECK_FAILED, f"address {ip['address']} is missing from {req.ifname}")
        self.ipam.check(req, record.config)

    # ---- GC and STATUS --------------------------------------------------------------------
    def gc(self, req: CniRequest) -> None:
        valid = valid_attachments(req.config)
        for record in self.attachments.of_network(req.network_name):
            if (record.container_id, record.ifname) not in valid:
                self._collect(req, record)
        self.ipam.gc(req)

    def _collect(self, req: CniRequest, record: Attachment) -> None:
        log.info("gc: removing stale attachment %s/%s", record.container_id, record.ifname)
        stale = CniRequest("DEL", record.container_id, record.netns, record.ifname, {}, req.path, req.env,
                           record.config)
        self._remove_link(record.netns, record.ifname, recorded_rules(record))
        self.ipam.delete(stale, record.config)
        self.attachments.drop(record.container_id, record.ifname)

    def status(self, req: CniRequest) -> None:
        conf = parse_conf(req.config)
        try:
            link = self._master(conf)
        except CniError as exc:
            raise CniError(NOT_AVAILABLE, exc.msg, exc.details) from None
        if not link.carrier:
            raise CniError(LIMITED_CONNECTIVITY, f"parent NIC {link.name} is down",
                           "pods attached to it have no secondary network until the link comes back")
        self.ipam.status(req)


def recorded_rules(record: Attachment | None) -> list[tuple[str, int]]:
    """(source IP, table) of the policy rules an ADD made, read back from its recorded result."""
    result = record.result if record else None
    if not result:
        return []
    tables = {r["table"] for r in result.get("routes", []) if "table" in r}
    ifname = record.ifname if record else ""
    index = next((n for n, i in enumerate(result.get("interfaces", [])) if i.get("name") == ifname), None)
    return [(ip["address"].split("/")[0], table) for ip in result.get("ips", [])
            if ip.get("interface") == index for table in tables]


def merge_prev(prev: Any, mine: dict[str, Any]) -> dict[str, Any]:
    """Chain onto a previous plugin's result: append our interfaces, re-indexing our IPs."""
    base = canonical_result(prev) if isinstance(prev, dict) else {"interfaces": [], "ips": [], "routes": []}
    offset = len(base.get("interfaces", []))
    ips = [{**ip, "interface": offset + ip.get("interface", 0)} for ip in mine["ips"]]
    return {
        "cniVersion": base.get("cniVersion", "1.1.0"),
        "interfaces": base.get("interfaces", []) + mine["interfaces"],
        "ips": base.get("ips", []) + ips,
        "routes": base.get("routes", []) + mine["routes"],
        "dns": base.get("dns") or mine["dns"],
    }
