"""A minimal rtnetlink client for the ADD/DEL hot path.

pyroute2 (used everywhere else) costs about 0.5 ms of Python per request in its 0.9 asyncio
core; an ADD makes seven requests, so that overhead was most of railnet's ADD time. These are
the same kernel messages `ip link/addr/route/rule` send, packed by hand, about 30 µs each.
Message layouts are from the kernel's uapi headers (linux/rtnetlink.h, if_link.h, fib_rules.h).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass

# message types and flags (linux/netlink.h, linux/rtnetlink.h)
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWRULE, RTM_DELRULE = 20, 24, 32, 33
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
# attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 5, 16, 18, 28
IF_OPER_UNKNOWN, IF_OPER_UP = 0, 6
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_MACVLAN_MODE = 1, 2, 1
# SR-IOV VF settings of a PF (if_link.h): IFLA_VFINFO_LIST > IFLA_VF_INFO > IFLA_VF_*
IFLA_VFINFO_LIST, IFLA_EXT_MASK, RTEXT_FILTER_VF = 22, 29, 1
IFLA_VF_INFO, IFLA_VF_MAC, IFLA_VF_VLAN, IFLA_VF_SPOOFCHK, IFLA_VF_LINK_STATE, IFLA_VF_TRUST = 1, 1, 2, 4, 5, 9
NLA_F_NESTED = 0x8000
VF_LINK_STATES = {"auto": 0, "enable": 1, "disable": 2}
IFA_ADDRESS, IFA_LOCAL = 1, 2
# A new IPv6 address stays `tentative` (no bind(), not a source) for the ~1 s of DAD unless it is
# added as optimistic; with the interface's optimistic_dad on, DAD still runs and still catches a
# duplicate. The sysctl alone covers only autoconfigured addresses, not ones added by netlink.
IFA_F_OPTIMISTIC = 0x04
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
FRA_SRC, FRA_PRIORITY, FRA_TABLE = 2, 6, 15
IFF_UP = 0x1
RTPROT_STATIC, RTN_UNICAST, FR_ACT_TO_TBL = 4, 1, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RT_TABLE_MAIN = 254
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")  # also the layout of struct fib_rule_hdr
_RTATTR = struct.Struct("=HH")


class RtnlError(OSError):
    """The kernel said no; `errno` holds its reason."""


def attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def cstr(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def parse_attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        out[kind & 0x3FFF] = data[offset + _RTATTR.size: offset + length]
        offset += (length + 3) & ~3
    return out


def _family(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    kind: str | None
    carrier: bool  # operationally up (or a driver that does not report it)
    up: bool = False  # administratively up (IFF_UP)


@dataclass(frozen=True)
class VfState:
    """One VF's settings as its PF reports them; None where the driver does not report a value
    (spoofchk/trust read as -1 on drivers without them)."""

    vf: int
    mac: str | None
    vlan: int | None
    qos: int | None
    spoofchk: bool | None
    trust: bool | None
    link_state: str | None


def _vf_info(vf: int, mac: str | None = None, vlan: int | None = None, qos: int = 0,
             spoofchk: bool | None = None, trust: bool | None = None, link_state: str | None = None) -> bytes:
    """IFLA_VFINFO_LIST carrying one IFLA_VF_INFO for `vf` with the settings that are not None."""
    inner = b""
    if mac is not None:
        inner += attr(IFLA_VF_MAC, struct.pack("=I", vf) + bytes.fromhex(mac.replace(":", "")).ljust(32, b"\0"))
    if vlan is not None:
        inner += attr(IFLA_VF_VLAN, struct.pack("=III", vf, vlan, qos))
    if spoofchk is not None:
        inner += attr(IFLA_VF_SPOOFCHK, struct.pack("=II", vf, int(spoofchk)))
    if link_state is not None:
        inner += attr(IFLA_VF_LINK_STATE, struct.pack("=II", vf, VF_LINK_STATES[link_state]))
    if trust is not None:
        inner += attr(IFLA_VF_TRUST, struct.pack("=II", vf, int(trust)))
    return attr(IFLA_VFINFO_LIST | NLA_F_NESTED, attr(IFLA_VF_INFO | NLA_F_NESTED, inner))


def _vf_flag(info: dict[int, bytes], kind: int) -> bool | None:
    """spoofchk/trust: {u32 vf, u32 setting}; the kernel reports -1 when the driver has no such knob."""
    if kind not in info:
        return None
    value = struct.unpack_from("=Ii", info[kind])[1]
    return None if value < 0 else bool(value)


def parse_vf_infos(vfinfo_list: bytes) -> dict[int, VfState]:
    """The VFs of an IFLA_VFINFO_LIST payload, by VF number."""
    out: dict[int, VfState] = {}
    offset = 0
    while offset + _RTATTR.size <= len(vfinfo_list):  # IFLA_VF_INFO repeats: parse_attrs keeps one per type
        length, _ = _RTATTR.unpack_from(vfinfo_list, offset)
        if length < _RTATTR.size:
            break
        info = parse_attrs(vfinfo_list[offset + _RTATTR.size: offset + length])
        offset += (length + 3) & ~3
        if IFLA_VF_MAC not in info:
            continue
        vf = struct.unpack_from("=I", info[IFLA_VF_MAC])[0]
        mac = ":".join(f"{b:02x}" for b in info[IFLA_VF_MAC][4:10])
        vlan = qos = None
        if IFLA_VF_VLAN in info:
            _, vlan, qos = struct.unpack_from("=III", info[IFLA_VF_VLAN])

        state = None
        if IFLA_VF_LINK_STATE in info:
            code = struct.unpack_from("=II", info[IFLA_VF_LINK_STATE])[1]
            state = next((k for k, v in VF_LINK_STATES.items() if v == code), None)
        out[vf] = VfState(vf, mac, vlan, qos, _vf_flag(info, IFLA_VF_SPOOFCHK), _vf_flag(info, IFLA_VF_TRUST), state)
    return out


class Rtnl:
    """One NETLINK_ROUTE socket, bound to the network namespace it was created in."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _request(self, msg_type: int, flags: int, body: bytes, bufsize: int = 65536) -> bytes | None:
        """Send one request; return the reply payload of a GET, None for an acknowledged change."""
        self.seq += 1
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | flags, self.seq, 0)
        self.sock.send(header + body)
        while True:
            data = self.sock.recv(bufsize)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
                payload = data[offset + _NLMSGHDR.size: offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue  # a late answer to an earlier request
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise RtnlError(code, os.strerror(code))
                    return None
                if kind != NLMSG_DONE:
                    return payload

    # ---- links ------------------------------------------------------------------------------
    def link(self, name: str) -> Link | None:
        try:
            reply = self._request(RTM_GETLINK, 0, _IFINFOMSG.pack(0, 0, 0, 0, 0) + cstr(IFLA_IFNAME, name))
        except RtnlError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        assert reply is not None
        _, _, index, flags, _ = _IFINFOMSG.unpack_from(reply)
        attrs = parse_attrs(reply[_IFINFOMSG.size:])
        info = parse_attrs(attrs.get(IFLA_LINKINFO, b""))
        kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode() if IFLA_INFO_KIND in info else None
        mac = ":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b""))
        oper = attrs.get(IFLA_OPERSTATE, bytes([IF_OPER_UNKNOWN]))[0]
        return Link(index, attrs[IFLA_IFNAME].rstrip(b"\0").decode(), mac,
                    struct.unpack("=I", attrs[IFLA_MTU])[0], kind, oper in (IF_OPER_UP, IF_OPER_UNKNOWN), bool(flags & IFF_UP))

    def add_macvlan(self, name: str, parent: int, mode: str, netns_fd: int, mtu: int | None = None,
                    mac: str | None = None) -> None:
        """Create the macvlan directly in the namespace behind `netns_fd`."""
        data = u32(IFLA_MACVLAN_MODE, MACVLAN_MODES[mode])
        info = attr(IFLA_LINKINFO, cstr(IFLA_INFO_KIND, "macvlan") + attr(IFLA_INFO_DATA, data))
        body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + cstr(IFLA_IFNAME, name) + u32(IFLA_LINK, parent)
        body += u32(IFLA_NET_NS_FD, netns_fd) + info
        if mtu:
            body += u32(IFLA_MTU, mtu)
        if mac:
            body += attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
        self._request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def set_link(self, index: int, *, name: str | None = None, mtu: int | None = None,
                 mac: str | None = None, netns_fd: int | None = None) -> None:
        """Change a link. With `netns_fd` and `name` it is moved and renamed in one request: the
        kernel moves it first and renames it there, so its old name may exist in the target."""
        body = _IFINFOMSG.pack(0, 0, index, 0, 0)
        if netns_fd is not None:
            body += u32(IFLA_NET_NS_FD, netns_fd)
        if name:
            body += cstr(IFLA_IFNAME, name)
        if mtu:
            body += u32(IFLA_MTU, mtu)
        if mac:
            body += attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
        self._request(RTM_NEWLINK, NLM_F_ACK, body)

    def set_down(self, index: int) -> None:
        self._request(RTM_NEWLINK, NLM_F_ACK, _IFINFOMSG.pack(0, 0, index, 0, IFF_UP))

    def vf_states(self, pf_index: int) -> dict[int, VfState]:
        """The PF's VF settings (`ip link show <pf>`'s vf lines); empty when it reports none."""
        body = _IFINFOMSG.pack(0, 0, pf_index, 0, 0) + u32(IFLA_EXT_MASK, RTEXT_FILTER_VF)
        reply = self._request(RTM_GETLINK, 0, body, bufsize=1 << 20)  # one message per PF: ~200 B per VF
        assert reply is not None
        attrs = parse_attrs(reply[_IFINFOMSG.size:])
        return parse_vf_infos(attrs.get(IFLA_VFINFO_LIST, b""))

    def set_vf(self, pf_index: int, vf: int, *, mac: str | None = None, vlan: int | None = None, qos: int = 0,
               spoofchk: bool | None = None, trust: bool | None = None, link_state: str | None = None) -> None:
        """`ip link set <pf> vf <vf> mac .. vlan .. qos .. spoofchk .. trust .. state ..` in one request."""
        body = _IFINFOMSG.pack(0, 0, pf_index, 0, 0)
        body += _vf_info(vf, mac, vlan, qos, spoofchk, trust, link_state)
        self._request(RTM_NEWLINK, NLM_F_ACK, body)

    def set_up(self, index: int) -> None:
        self._request(RTM_NEWLINK, NLM_F_ACK, _IFINFOMSG.pack(0, 0, index, IFF_UP, IFF_UP))

    def delete_link(self, index: int) -> None:
        self._request(RTM_DELLINK, NLM_F_ACK, _IFINFOMSG.pack(0, 0, index, 0, 0))

    # ---- addresses, routes, rules -----------------------------------------------------------
    def add_address(self, index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        packed = iface.ip.packed
        flags = IFA_F_OPTIMISTIC if iface.version == 6 else 0
        body = _IFADDRMSG.pack(_family(iface.ip), iface.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index)
        self._request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                      body + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed))

    def add_route(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, oif: int,
                  gateway: str | None = None, table: int = RT_TABLE_MAIN,
                  prefsrc: str | None = None, scope: int = RT_SCOPE_UNIVERSE) -> None:
        family = _family(dst.network_address)
        body = _RTMSG.pack(family, dst.prefixlen, 0, 0, table if table < 256 else 0, RTPROT_STATIC, scope,
                           RTN_UNICAST, 0)
        body += u32(RTA_TABLE, table) + u32(RTA_OIF, oif)
        if dst.prefixlen:
            body += attr(RTA_DST, dst.network_address.packed)
        if gateway:
            body += attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        if prefsrc:
            body += attr(RTA_PREFSRC, ipaddress.ip_address(prefsrc).packed)
        self._request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def _rule(self, msg_type: int, flags: int, src: str, table: int, priority: int) -> None:
        addr = ipaddress.ip_address(src)
        body = _RTMSG.pack(_family(addr), 0, addr.max_prefixlen, 0, table if table < 256 else 0, 0, 0,
                           FR_ACT_TO_TBL, 0)
        body += attr(FRA_SRC, addr.packed) + u32(FRA_TABLE, table) + u32(FRA_PRIORITY, priority)
        self._request(msg_type, flags, body)

    def add_rule(self, src: str, table: int, priority: int) -> None:
        """`ip rule add from <src> lookup <table> priority <priority>`"""
        self._rule(RTM_NEWRULE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, src, table, priority)

    def delete_rule(self, src: str, table: int, priority: int) -> None:
        self._rule(RTM_DELRULE, NLM_F_ACK, src, table, priority)


class ThreadRtnl:
    """`rtnl()`: this thread's own Rtnl, opened on first use in the namespace the thread is in then
    (the agent's, for its workers), so concurrent requests never wait on each other's socket."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self) -> Rtnl:
        rtnl: Rtnl | None = getattr(self._local, "rtnl", None)
        if rtnl is None:
            rtnl = self._local.rtnl = Rtnl()
        return rtnl
