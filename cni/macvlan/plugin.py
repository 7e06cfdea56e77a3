"""railnet-macvlan: a macvlan interface on a RoCE NIC, created directly inside the pod netns.

ADD reads top to bottom: validate -> find the parent NIC -> record intent -> IPAM -> create the
link in the target netns under its final name -> configure it (cni.linux.iface) -> record the
result. Each undo is registered before the next step can fail; any failure runs them in reverse
(cni.spec.rollback), so a failed ADD leaves no link, no address allocation and no record behind.
"""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError
from pyroute2 import IPRoute

from cni import faults
from cni.attachments import Attachment, AttachmentStore
from cni.ipam_calls import IpamCalls
from cni.linux.iface import check_sysctl_overrides, configure_iface, netlink
from cni.linux.netns import NetNS, NetnsError
from cni.linux.nic import resolve_master
from cni.linux.rtnl import Link, Rtnl, RtnlError, ThreadRtnl
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
from cni.spec.model import MacAddress, WireModel, is_mac
from cni.spec.request import CniRequest
from cni.spec.rollback import Rollback
from cni.spec.versions import canonical_result
from ipam.config import validation_error
from ipam.plugin import valid_attachments

log = logging.getLogger("railnet.macvlan")

class MacvlanConf(WireModel):
    """The network config (camelCase on the wire: pciAddress, rdmaDevice, policyRouting, ...).
    Unknown keys are kept: runtimes add their own (capabilities, args, cni.dev/* keys)."""

    model_config = ConfigDict(extra="allow")

    cni_version: str
    name: str
    type: str
    master: str | None = None
    pci_address: str | None = None
    rdma_device: str | None = None
    mode: Literal["bridge", "private", "vepa", "passthru"] = "bridge"
    mtu: int | None = Field(default=None, ge=68, le=65535)
    mac: MacAddress | None = None
    ipam: dict[str, Any] | None = None
    policy_routing: bool = True
    route_table_base: int = Field(default=1000, ge=1, le=0x7FFF0000)
    sysctl: dict[str, str] = Field(default_factory=dict)
    runtime_config: dict[str, Any] = Field(default_factory=dict)
    prev_result: dict[str, Any] | None = None

    def wanted_mac(self) -> str | None:
        mac = self.runtime_config.get("mac") or self.mac  # the 'mac' capability wins over the config
        if mac is not None and not is_mac(str(mac)):
            raise CniError(INVALID_CONFIG, f"runtimeConfig.mac {mac!r} is not a MAC address")
        if mac and self.mode == "passthru":
            # A passthru macvlan shares the NIC's MAC; setting one would rewrite the host NIC's address.
            raise CniError(INVALID_CONFIG, "a MAC address cannot be set in passthru mode",
                           "drop 'mac' (the interface takes the NIC's own MAC) or use another mode")
        return str(mac).lower() if mac else None


def parse_conf(config: dict[str, Any]) -> MacvlanConf:
    try:
        conf = MacvlanConf.model_validate(config)
    except ValidationError as exc:
        raise validation_error("railnet-macvlan config", exc) from None
    check_sysctl_overrides(conf.sysctl)
    return conf


class MacvlanPlugin:
    def __init__(self, attachments: AttachmentStore, ipam: IpamCalls, sysfs: Path) -> None:
        self.attachments = attachments
        self.ipam = ipam
        self.sysfs = sysfs
        self._host = ThreadRtnl()

    @property
    def host(self) -> Rtnl:
        """A netlink socket in the agent's own namespace (where the NICs live), one per thread,
        so concurrent requests never wait on each other's socket."""
        return self._host()

    # ---- ADD ------------------------------------------------------------------------------
    def add(self, req: CniRequest) -> dict[str, Any]:
        conf = parse_conf(req.config)
        mac = conf.wanted_mac()
        if conf.ipam is None:
            raise CniError(INVALID_CONFIG, "railnet-macvlan needs an 'ipam' section",
                           'e.g. "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}]]}')
        master_index = self._master(conf).index
        with NetNS(req.netns) as ns, Rollback(f"ADD {req.container_id}/{req.ifname}") as rollback:
            if not self.attachments.begin(req.container_id, req.ifname, conf.name, req.netns, req.config):
                raise CniError(INTERFACE_EXISTS, f"attachment {req.container_id}/{req.ifname} already exists",
                               "DEL it before adding it again")
            rollback.push("attachment record", lambda: self.attachments.drop(req.container_id, req.ifname))
            rollback.push("IP allocation", lambda: self.ipam.delete(req, req.config))
            ipam_result = self.ipam.add(req, req.config)
            faults.point("add:ip-allocated")

            self._create_link(req, conf, ns, master_index, mac)
            # By name: the undo must not depend on a lookup that may itself fail.
            rollback.push("macvlan", lambda: self._delete_own_link(ns, req.ifname))
            link = ns.rtnl.link(req.ifname)
            if link is None:
                raise CniError(KERNEL_REFUSED, f"interface {req.ifname} vanished right after it was created")
            table = conf.route_table_base + link.index if conf.policy_routing else None
            faults.point("add:link-created")
            routes = configure_iface(ns, link.index, req.ifname, ipam_result, conf.sysctl, table, rollback)
            faults.point("add:configured")

            iface: dict[str, Any] = {"name": req.ifname, "mac": link.mac, "mtu": link.mtu, "sandbox": req.netns}
            mine = {"interfaces": [iface], "ips": [dict(ip) for ip in ipam_result.get("ips", [])],
                    "routes": routes, "dns": ipam_result.get("dns") or {}}
            result = merge_prev(req.config.get("prevResult"), mine)
            self.attachments.finish(req.container_id, req.ifname, result)
        return result

    def _create_link(self, req: CniRequest, conf: MacvlanConf, ns: NetNS, master_index: int,
                     mac: str | None) -> None:
        # Created under its final name straight in the pod's namespace: the kernel checks the name
        # there, not on the host, so no temporary name and rename (2-3 ms) are needed.
        try:
            self.host.add_macvlan(req.ifname, master_index, conf.mode, ns.fd, conf.mtu, mac)
        except RtnlError as exc:
            if exc.errno == errno.EEXIST:
                raise CniError(INTERFACE_EXISTS, f"interface {req.ifname} already exists in {req.netns}",
                               "choose another CNI_IFNAME or remove the interface") from None
            raise CniError(KERNEL_REFUSED, f"kernel refused to create a {conf.mode} macvlan on parent "
                           f"#{master_index}", f"{exc.strerror} (errno {exc.errno})") from None

    @staticmethod
    def _delete_own_link(ns: NetNS, ifname: str) -> None:
        link = ns.rtnl.link(ifname)
        if link is not None and link.kind == "macvlan":  # never delete an interface railnet did not make
            ns.rtnl.delete_link(link.index)

    def _master(self, conf: MacvlanConf) -> Link:
        """The parent NIC. One lookup by name; the full link list only to explain a miss."""
        name = resolve_master(self.sysfs, conf.master, conf.pci_address, conf.rdma_device)
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
        if not netns:
            return
        try:
            ns = NetNS(netns)
        except NetnsError as exc:
            # ENOENT: the netns file is gone; EINVAL: the file is left but the namespace behind it
            # is not (a stale bind mount). Either way the link and its rules went with it.
            if exc.errno in (errno.ENOENT, errno.EINVAL):
                log.info("DEL: network namespace %s is gone (%s)", netns, exc.strerror)
                return
            raise
        with ns:
            addresses: set[str] = set()
            link = ns.rtnl.link(ifname)
            if link is not None and link.kind == "macvlan":  # never delete an interface railnet did not make
                if not rules:  # no record (a crash before it was written): read the addresses
                    addresses = {a.get_attr("IFA_ADDRESS") for a in ns.ipr.get_addr(index=link.index)}
                netlink(f"delete interface {ifname}", ns.rtnl.delete_link, link.index)
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
        """Remove every attachment of this network that the runtime no longer lists. One record
        that cannot be collected does not stop the others; the first failure is reported after."""
        valid = valid_attachments(req.config)
        failed: list[str] = []
        for record in self.attachments.of_network(req.network_name):
            if (record.container_id, record.ifname) not in valid:
                try:
                    self._collect(req, record)
                except Exception as exc:
                    log.warning("gc: cannot remove %s/%s: %s", record.container_id, record.ifname, exc)
                    failed.append(f"{record.container_id}/{record.ifname}: {exc}")
        self.ipam.gc(req)
        if failed:
            raise CniError(KERNEL_REFUSED, f"GC could not remove {len(failed)} stale attachment(s)",
                           "; ".join(failed[:5]))

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
