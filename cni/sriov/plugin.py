"""railnet-sriov: an SR-IOV VF, chosen by PCI address, moved into the pod's network namespace.

ADD reads top to bottom: validate -> find the VF, its PF and their netdevs in sysfs and read the
PF's current VF settings -> record intent (with everything DEL needs to put it back) -> IPAM ->
set MAC/VLAN/spoofchk/trust/link state on the PF -> move the VF netdev into the pod under
CNI_IFNAME -> configure it (cni.linux.iface) -> record the result. Each undo is registered before
the next step can fail; a failed ADD leaves the VF on the host under its own name, the PF's VF
settings as they were, no address allocation and no record (cni.spec.rollback).

A physical VF is never destroyed: when the pod's namespace goes away the kernel hands its netdev
back to the host namespace (under the pod-side name, or devN when that name is taken). DEL finds
it by PCI address in sysfs and renames it back, so it works with or without the namespace.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, ConfigDict, Field, ValidationError, model_validator

from cni import faults
from cni.attachments import Attachment, AttachmentStore
from cni.ipam_calls import IpamCalls
from cni.linux import rdma
from cni.linux.iface import check_sysctl_overrides, configure_iface, netlink
from cni.linux.netns import NetNS, NetnsError, entered
from cni.linux.rtnl import Link, Rtnl, RtnlError, ThreadRtnl
from cni.macvlan.plugin import MacvlanPlugin, merge_prev, recorded_rules
from cni.spec.errors import (
    CHECK_FAILED,
    INTERFACE_EXISTS,
    INVALID_CONFIG,
    KERNEL_REFUSED,
    MASTER_NOT_FOUND,
    NOT_AVAILABLE,
    CniError,
)
from cni.spec.model import MacAddress, WireModel, is_mac
from cni.spec.request import CniRequest
from cni.spec.rollback import Rollback
from cni.spec.versions import canonical_result
from cni.sriov.vf import Vf, netdev_of, resolve_vf
from ipam.config import validation_error
from ipam.plugin import valid_attachments

log = logging.getLogger("railnet.sriov")

# What DEL needs to put the VF back, stored with the attachment record's config before ADD acts.
STATE_KEY = "railnetSriovState"
ZERO_MAC = "00:00:00:00:00:00"
RETURN_WAIT = 1.0  # seconds DEL waits for the kernel to hand a VF back after its namespace went


class SriovConf(WireModel):
    """The network config, in sriov-cni's names (deviceID, vlan, vlanQoS, spoofchk, trust,
    link_state or linkState). Unknown keys are kept: runtimes add their own."""

    model_config = ConfigDict(extra="allow")

    cni_version: str
    name: str
    type: str
    device_id: str | None = Field(default=None, alias="deviceID")
    vlan: int | None = Field(default=None, ge=0, le=4094, strict=True)
    vlan_qos: int | None = Field(default=None, ge=0, le=7, alias="vlanQoS", strict=True)
    mac: MacAddress | None = None
    spoofchk: Literal["on", "off"] | None = None
    trust: Literal["on", "off"] | None = None
    link_state: Literal["auto", "enable", "disable"] | None = Field(
        default=None, validation_alias=AliasChoices("linkState", "link_state"))
    mtu: int | None = Field(default=None, ge=68, le=65535, strict=True)
    ipam: dict[str, Any] | None = None
    policy_routing: bool = True
    route_table_base: int = Field(default=1000, ge=1, le=0x7FFF0000)
    sysctl: dict[str, str] = Field(default_factory=dict)
    runtime_config: dict[str, Any] = Field(default_factory=dict)
    prev_result: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _qos_needs_vlan(self) -> SriovConf:
        if self.vlan_qos and not self.vlan:  # as sriov-cni: a priority without a VLAN tag means nothing
            raise ValueError("vlanQoS needs a non-zero vlan")
        if STATE_KEY in (self.model_extra or {}):
            raise ValueError(f"{STATE_KEY} is railnet's own record and cannot be set in a config")
        return self

    def wanted_device_id(self) -> str:
        device_id = self.runtime_config.get("deviceID") or self.device_id  # the capability wins
        if not device_id:
            raise CniError(INVALID_CONFIG, "railnet-sriov needs the VF's PCI address in 'deviceID'",
                           "a device plugin (through Multus or railnet's meta plugin) sets it, or "
                           'set it in the config: "deviceID": "0000:3b:02.1"')
        if not isinstance(device_id, str):
            raise CniError(INVALID_CONFIG, f"deviceID {device_id!r} is not a string", "e.g. 0000:3b:02.1")
        return device_id

    def wanted_mac(self) -> str | None:
        mac = self.runtime_config.get("mac") or self.mac
        if mac is not None and not is_mac(str(mac)):
            raise CniError(INVALID_CONFIG, f"runtimeConfig.mac {mac!r} is not a MAC address")
        return str(mac).lower() if mac else None

    def vf_settings(self, mac: str | None) -> dict[str, Any]:
        """The settings to make on the PF for this VF, as Rtnl.set_vf keywords; only those asked for."""
        out: dict[str, Any] = {}
        if mac:
            out["mac"] = mac
        if self.vlan is not None:
            out["vlan"], out["qos"] = self.vlan, self.vlan_qos or 0
        if self.spoofchk is not None:
            out["spoofchk"] = self.spoofchk == "on"
        if self.trust is not None:
            out["trust"] = self.trust == "on"
        if self.link_state is not None:
            out["link_state"] = self.link_state
        return out


def parse_conf(config: dict[str, Any]) -> SriovConf:
    try:
        conf = SriovConf.model_validate(config)
    except ValidationError as exc:
        raise validation_error("railnet-sriov config", exc) from None
    check_sysctl_overrides(conf.sysctl)
    return conf


def without_state(config: dict[str, Any]) -> dict[str, Any]:
    """The recorded config as the runtime gave it (for IPAM, which may be an exec'd plugin)."""
    return {k: v for k, v in config.items() if k != STATE_KEY}


class SriovPlugin:
    def __init__(self, attachments: AttachmentStore, ipam: IpamCalls, sysfs: Path) -> None:
        self.attachments = attachments
        self.ipam = ipam
        self.sysfs = sysfs
        self._host = ThreadRtnl()
        # The agent's own namespace (where VFs live when no pod has them), to move them back into.
        self.host_ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    @property
    def host(self) -> Rtnl:
        """A netlink socket in the agent's own namespace, one per thread (as macvlan's)."""
        return self._host()

    # ---- ADD ------------------------------------------------------------------------------
    def add(self, req: CniRequest) -> dict[str, Any]:
        conf = parse_conf(req.config)
        if conf.ipam is None:
            raise CniError(INVALID_CONFIG, "railnet-sriov needs an 'ipam' section",
                           'e.g. "ipam": {"type": "railnet-ipam", "pool": "rail0"}')
        mac = conf.wanted_mac()
        vf = resolve_vf(self.sysfs, conf.wanted_device_id())
        vf_link, pf = self._links(vf)
        wanted = conf.vf_settings(mac)
        state = self._state(vf, vf_link, pf, wanted)
        record_config = {**req.config, STATE_KEY: state}
        with NetNS(req.netns) as ns, Rollback(f"ADD {req.container_id}/{req.ifname}") as rollback:
            if not self.attachments.begin(req.container_id, req.ifname, conf.name, req.netns, record_config):
                raise CniError(INTERFACE_EXISTS, f"attachment {req.container_id}/{req.ifname} already exists",
                               "DEL it before adding it again")
            rollback.push("attachment record", lambda: self.attachments.drop(req.container_id, req.ifname))
            rollback.push("IP allocation", lambda: self.ipam.delete(req, req.config))
            ipam_result = self.ipam.add(req, req.config)
            faults.point("add:ip-allocated")

            if wanted:
                rollback.push("VF settings on the PF", lambda: self._restore_settings(state))
                netlink(f"set VF {vf.index} of {pf.name} ({describe(wanted)})", self.host.set_vf,
                        pf.index, vf.index, **wanted)
            rollback.push("VF in the pod", lambda: self._return(ns, req.ifname, state, mac))
            self._move_in(req, vf_link, ns)
            if state["rdmaMove"]:  # exclusive RDMA netns mode: verbs only work where the device is
                self._rdma_in(state, ns)
            link = ns.rtnl.link(req.ifname)
            if link is None:
                raise CniError(KERNEL_REFUSED, f"VF {vf.pci_address} vanished right after it was moved")
            if mac or conf.mtu:
                netlink(f"set MAC/MTU of {req.ifname}", ns.rtnl.set_link, link.index, mtu=conf.mtu, mac=mac)
                link = ns.rtnl.link(req.ifname) or link
            faults.point("add:link-created")
            table = conf.route_table_base + link.index if conf.policy_routing else None
            routes = configure_iface(ns, link.index, req.ifname, ipam_result, conf.sysctl, table, rollback)
            faults.point("add:configured")

            iface: dict[str, Any] = {"name": req.ifname, "mac": link.mac, "mtu": link.mtu, "sandbox": req.netns,
                                     "pciID": vf.pci_address}
            mine = {"interfaces": [iface], "ips": [dict(ip) for ip in ipam_result.get("ips", [])],
                    "routes": routes, "dns": ipam_result.get("dns") or {}}
            result = merge_prev(req.config.get("prevResult"), mine)
            self.attachments.finish(req.container_id, req.ifname, result)
        return result

    def _links(self, vf: Vf) -> tuple[Link, Link]:
        """The VF's netdev and the PF's, both in the agent's namespace."""
        vf_link = self.host.link(vf.netdev) if vf.netdev else None
        if vf_link is None:
            raise CniError(MASTER_NOT_FOUND, f"VF {vf.pci_address} is in use or has no netdev",
                           "its netdev is not in the host namespace: another pod holds it (a DEL not done yet?) "
                           "or it is bound to a driver without one (vfio-pci); check the device plugin's pool")
        pf = self.host.link(vf.pf_netdev)
        if pf is None:
            raise CniError(MASTER_NOT_FOUND, f"PF netdev {vf.pf_netdev} of VF {vf.pci_address} not found",
                           "sysfs names it but the host namespace has no such interface")
        return vf_link, pf

    def _state(self, vf: Vf, vf_link: Link, pf: Link, wanted: dict[str, Any]) -> dict[str, Any]:
        """Everything DEL needs, read before anything changes (the PF's current VF settings too)."""
        previous: dict[str, Any] | None = None
        if wanted:
            now = netlink(f"read the VF settings of {pf.name}", self.host.vf_states, pf.index).get(vf.index)
            if now is not None:  # None: the PF reports no VFs (setting them will be refused)
                previous = {"mac": now.mac, "vlan": now.vlan, "qos": now.qos, "spoofchk": now.spoofchk,
                            "trust": now.trust, "link_state": now.link_state}
        return {"pciAddress": vf.pci_address, "vfIndex": vf.index, "pfPciAddress": vf.pf_pci_address,
                "pfNetdev": vf.pf_netdev, "rdmaDevice": vf.rdma_device, "hostName": vf_link.name,
                "hostIndex": vf_link.index, "hostMac": vf_link.mac, "hostMtu": vf_link.mtu, "hostUp": vf_link.up,
                "set": sorted(wanted), "previous": previous,
                "rdmaMove": bool(vf.rdma_device) and self._rdma_exclusive()}

    @staticmethod
    def _rdma_exclusive() -> bool:
        try:
            return rdma.exclusive_mode()
        except rdma.RdmaError as exc:
            raise CniError(KERNEL_REFUSED, "cannot read the RDMA subsystem's netns mode",
                           f"{exc.strerror} (errno {exc.errno})") from None

    def _rdma_in(self, state: dict[str, Any], ns: NetNS) -> None:
        name = state["rdmaDevice"]
        try:
            with rdma.RdmaNetlink() as nl:
                moved = nl.move(name, ns.fd)
        except rdma.RdmaError as exc:
            raise CniError(KERNEL_REFUSED, f"kernel refused to move RDMA device {name} into the pod",
                           f"{exc.strerror} (errno {exc.errno})") from None
        if not moved:
            raise CniError(MASTER_NOT_FOUND, f"RDMA device {name} of VF {state['pciAddress']} is not in the "
                           "host namespace", "another pod may hold it (exclusive RDMA netns mode)")

    def _rdma_back(self, ns: NetNS, state: dict[str, Any]) -> None:
        """The VF's RDMA device from the pod back to the host (before its netdev, as it went in after)."""
        name = state["rdmaDevice"]
        try:
            with entered(ns.fd):  # a NETLINK_RDMA socket sees the devices of the namespace it was opened in
                nl = rdma.RdmaNetlink()
            with nl:
                nl.move(name, self.host_ns)  # False: it never went in, or already came back
        except rdma.RdmaError as exc:
            raise CniError(KERNEL_REFUSED, f"kernel refused to move RDMA device {name} back to the host",
                           f"{exc.strerror} (errno {exc.errno})") from None

    def _move_in(self, req: CniRequest, vf_link: Link, ns: NetNS) -> None:
        if ns.rtnl.link(req.ifname) is not None:  # the kernel would move it first, then fail the rename
            raise CniError(INTERFACE_EXISTS, f"interface {req.ifname} already exists in {req.netns}",
                           "choose another CNI_IFNAME or remove the interface")
        # Moved and renamed in one request: the kernel closes (downs) it, moves it, then renames it
        # inside the pod, so its host name may exist there; a refused move changes nothing.
        try:
            self.host.set_link(vf_link.index, name=req.ifname, netns_fd=ns.fd)
        except RtnlError as exc:
            if exc.errno == errno.EEXIST:
                raise CniError(INTERFACE_EXISTS, f"interface {req.ifname} already exists in {req.netns}",
                               "choose another CNI_IFNAME or remove the interface") from None
            raise CniError(KERNEL_REFUSED, f"kernel refused to move VF {vf_link.name} into {req.netns}",
                           f"{exc.strerror} (errno {exc.errno})") from None

    # ---- putting a VF back ------------------------------------------------------------------
    def _return(self, ns: NetNS, ifname: str, state: dict[str, Any], mac: str | None) -> None:
        """Move our VF out of the pod under its host name (undo of the move; also DEL's path)."""
        if state.get("rdmaMove"):
            self._rdma_back(ns, state)
        link = self._ours_in_pod(ns, ifname, state, mac)
        if link is not None:
            netlink(f"bring {link.name} down", ns.rtnl.set_down, link.index)
            try:
                ns.rtnl.set_link(link.index, name=state["hostName"], netns_fd=self.host_ns)
            except RtnlError as exc:
                if exc.errno != errno.EEXIST:
                    raise CniError(KERNEL_REFUSED, f"kernel refused to move VF {state['pciAddress']} back",
                                   f"{exc.strerror} (errno {exc.errno})") from None
                # Its host name was taken meanwhile: back under a free devN name; settle() logs it.
                netlink("move the VF back", ns.rtnl.set_link, link.index, name="dev%d", netns_fd=self.host_ns)
        self._settle(state, wait=False)

    def _ours_in_pod(self, ns: NetNS, ifname: str, state: dict[str, Any], mac: str | None) -> Link | None:
        """The VF in the pod: under CNI_IFNAME (or still its host name, if a rename failed), and
        recognisably ours, so an interface railnet did not move in is never taken out."""
        if (host := self.host.link(state["hostName"])) is not None and host.index == state["hostIndex"]:
            return None  # it never left the host
        for name in dict.fromkeys((ifname, state["hostName"])):
            link = ns.rtnl.link(name)
            if link is not None and (link.index == state["hostIndex"] or link.mac in (state["hostMac"], mac)):
                return link
        return None

    def _settle(self, state: dict[str, Any], wait: bool) -> None:
        """On the host: the VF under its own name with its own MAC and MTU. Found by PCI address,
        since a VF the kernel handed back carries the pod-side name or devN."""
        address, name = state["pciAddress"], state["hostName"]
        current = netdev_of(self.sysfs, address)
        deadline = time.monotonic() + (RETURN_WAIT if wait else 0)
        while current is None and time.monotonic() < deadline:  # namespace teardown is asynchronous
            time.sleep(0.05)
            current = netdev_of(self.sysfs, address)
        link = self.host.link(current) if current else None
        if link is None:
            log.warning("VF %s has no netdev on the host; its name %s is not restored", address, name)
            return
        if current != name:
            netlink(f"bring {current} down", self.host.set_down, link.index)
            try:
                self.host.set_link(link.index, name=name)
            except RtnlError as exc:
                if exc.errno != errno.EEXIST:
                    raise CniError(KERNEL_REFUSED, f"kernel refused to rename VF {address} back to {name}",
                                   f"{exc.strerror} (errno {exc.errno})") from None
                log.warning("VF %s stays %s: its name %s is taken on the host", address, current, name)
        if link.mac != state["hostMac"] or link.mtu != state["hostMtu"]:
            netlink(f"restore MAC/MTU of VF {address}", self.host.set_link, link.index,
                    mac=state["hostMac"] if link.mac != state["hostMac"] else None,
                    mtu=state["hostMtu"] if link.mtu != state["hostMtu"] else None)
        if state.get("hostUp"):  # moving a link closes it; it was up on the host before ADD
            netlink(f"bring VF {address} up", self.host.set_up, link.index)

    def _restore_settings(self, state: dict[str, Any]) -> None:
        """The PF's settings for this VF as they were before ADD (only those ADD changed)."""
        previous = state.get("previous")
        if not state.get("set") or previous is None:
            return  # nothing set, or the PF reported none (so setting them was refused)
        restore: dict[str, Any] = {}
        for key in state["set"]:
            value = previous.get(key)
            if value is None or key == "qos":  # unknown to the driver; qos goes with vlan
                continue
            if key == "mac" and value == ZERO_MAC:
                continue  # "no admin MAC": several drivers refuse to set zero; leave the pod's
            restore[key] = value
            if key == "vlan":
                restore["qos"] = previous.get("qos") or 0
        if restore:
            pf = self.host.link(state["pfNetdev"])
            if pf is None:
                raise CniError(MASTER_NOT_FOUND, f"PF netdev {state['pfNetdev']} is gone; VF settings not restored")
            netlink(f"restore VF {state['vfIndex']} settings on {pf.name}", self.host.set_vf, pf.index,
                    state["vfIndex"], **restore)

    # ---- DEL ------------------------------------------------------------------------------
    def delete(self, req: CniRequest) -> None:
        record = self.attachments.get(req.container_id, req.ifname)
        if record is None or STATE_KEY not in record.config:
            self.ipam.delete(req, req.config)  # nothing of ours was moved: a repeated DEL, or no ADD
            return
        self._release(record)
        self.ipam.delete(req, without_state(record.config))
        self.attachments.drop(req.container_id, req.ifname)

    def _release(self, record: Attachment) -> None:
        state = record.config[STATE_KEY]
        mac = _pod_mac(record)
        ns = self._open(record.netns)
        if ns is None:
            self._settle(state, wait=True)  # the kernel returns the VF itself when the namespace goes
        else:
            with ns:
                rules = recorded_rules(record)
                link = self._ours_in_pod(ns, record.ifname, state, mac)
                if not rules and link is not None:  # no result recorded (a crash mid-ADD): search
                    addresses = {a.get_attr("IFA_ADDRESS") for a in ns.ipr.get_addr(index=link.index)}
                    rules = MacvlanPlugin._rules_from(ns, addresses)
                for src, table in rules:  # rules outlive the link
                    try:
                        ns.rtnl.delete_rule(src, table, table)
                    except RtnlError as exc:
                        if exc.errno != errno.ENOENT:
                            raise
                self._return(ns, record.ifname, state, mac)
        self._restore_settings(state)

    @staticmethod
    def _open(netns: str) -> NetNS | None:
        if not netns:
            return None
        try:
            return NetNS(netns)
        except NetnsError as exc:
            # ENOENT: the netns file is gone; EINVAL: a stale bind mount without a namespace behind it.
            if exc.errno in (errno.ENOENT, errno.EINVAL):
                log.info("DEL: network namespace %s is gone (%s)", netns, exc.strerror)
                return None
            raise

    # ---- CHECK ----------------------------------------------------------------------------
    def check(self, req: CniRequest) -> None:
        record = self.attachments.get(req.container_id, req.ifname)
        if record is None or record.state != "added" or record.result is None:
            raise CniError(CHECK_FAILED, f"no attachment {req.container_id}/{req.ifname} is recorded", "ADD it first")
        prev = req.config.get("prevResult")
        if isinstance(prev, dict):
            names = [i.get("name") for i in canonical_result(prev).get("interfaces", [])]
            if req.ifname not in names:
                raise CniError(CHECK_FAILED, f"prevResult does not list interface {req.ifname}")
        mine = next(i for i in record.result["interfaces"] if i["name"] == req.ifname)
        with NetNS(req.netns) as ns:
            link = ns.rtnl.link(req.ifname)
            if link is None:
                raise CniError(CHECK_FAILED, f"interface {req.ifname} is missing from {req.netns}",
                               "it was removed after ADD; DEL and ADD the attachment again")
            if link.mac != mine["mac"]:
                raise CniError(CHECK_FAILED, f"interface {req.ifname} has MAC {link.mac}, expected {mine['mac']}")
            have = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ns.ipr.get_addr(index=link.index)}
            for ip in record.result["ips"]:
                if ip["address"] not in have:
                    raise CniError(CHECK_FAILED, f"address {ip['address']} is missing from {req.ifname}")
        self._check_settings(record.config)
        self.ipam.check(req, without_state(record.config))

    def _check_settings(self, config: dict[str, Any]) -> None:
        """The PF still has the VF settings ADD made (a PF reset or another tool may undo them)."""
        state = config[STATE_KEY]
        wanted = parse_conf(without_state(config)).vf_settings(_mac_of(config))
        if not wanted:
            return
        pf = self.host.link(state["pfNetdev"])
        now = self.host.vf_states(pf.index).get(state["vfIndex"]) if pf else None
        if now is None:
            raise CniError(CHECK_FAILED, f"PF {state['pfNetdev']} no longer reports VF {state['vfIndex']}")
        for key, value in wanted.items():
            if getattr(now, key) not in (value, None):  # None: the driver does not report it
                raise CniError(CHECK_FAILED, f"VF {state['vfIndex']} of {state['pfNetdev']} has {key} "
                               f"{getattr(now, key)!r}, expected {value!r}")

    # ---- GC and STATUS --------------------------------------------------------------------
    def gc(self, req: CniRequest) -> None:
        """Release every attachment of this network the runtime no longer lists (as macvlan's GC)."""
        valid = valid_attachments(req.config)
        failed: list[str] = []
        for record in self.attachments.of_network(req.network_name):
            if (record.container_id, record.ifname) in valid:
                continue
            try:
                log.info("gc: removing stale attachment %s/%s", record.container_id, record.ifname)
                config = without_state(record.config)
                stale = CniRequest("DEL", record.container_id, record.netns, record.ifname, {}, req.path,
                                   req.env, config)
                if STATE_KEY in record.config:
                    self._release(record)
                self.ipam.delete(stale, config)
                self.attachments.drop(record.container_id, record.ifname)
            except Exception as exc:
                log.warning("gc: cannot remove %s/%s: %s", record.container_id, record.ifname, exc)
                failed.append(f"{record.container_id}/{record.ifname}: {exc}")
        self.ipam.gc(req)
        if failed:
            raise CniError(KERNEL_REFUSED, f"GC could not remove {len(failed)} stale attachment(s)",
                           "; ".join(failed[:5]))

    def status(self, req: CniRequest) -> None:
        conf = parse_conf(req.config)
        if conf.device_id:  # a static VF in the config; usually the device plugin picks one per pod
            try:
                self._links(resolve_vf(self.sysfs, conf.device_id))
            except CniError as exc:
                raise CniError(NOT_AVAILABLE, exc.msg, exc.details) from None
        self.ipam.status(req)


def describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def _mac_of(config: dict[str, Any]) -> str | None:
    runtime = config.get("runtimeConfig")
    mac = (runtime.get("mac") if isinstance(runtime, dict) else None) or config.get("mac")
    return str(mac).lower() if mac else None


def _pod_mac(record: Attachment) -> str | None:
    """The MAC the VF had in the pod (from the recorded result), to recognise it there."""
    for iface in (record.result or {}).get("interfaces", []):
        if iface.get("name") == record.ifname:
            return str(iface.get("mac") or "") or None
    return _mac_of(record.config)
