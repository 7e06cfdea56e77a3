"""RDMA netlink (NETLINK_RDMA, the `rdma` tool's channel): the subsystem's network-namespace mode
and moving an RDMA device between namespaces.

In `exclusive` mode (`rdma system set netns exclusive`) an RDMA device is visible only in one
namespace, so a VF moved into a pod must take its RDMA device along (as `rdma dev set mlx5_4 netns
<pod>` does), or the pod gets a netdev without verbs. In `shared` mode (the default) every
namespace sees every device and nothing moves. When a namespace is destroyed the kernel returns
its RDMA devices to the initial namespace by itself.

Messages have no family header: the attributes follow the netlink header. The numbers are the
kernel's uapi (<rdma/rdma_netlink.h>); tests/unit/test_rdma_netlink.py checks them against the
installed header.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from cni.linux.rtnl import parse_attrs, u32

NETLINK_RDMA = 20
RDMA_NL_NLDEV = 5
RDMA_NLDEV_CMD_GET, RDMA_NLDEV_CMD_SET, RDMA_NLDEV_CMD_SYS_GET = 1, 2, 6
RDMA_NLDEV_ATTR_DEV_INDEX, RDMA_NLDEV_ATTR_DEV_NAME = 1, 2
RDMA_NLDEV_SYS_ATTR_NETNS_MODE, RDMA_NLDEV_NET_NS_FD = 66, 68
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
_HEADER = struct.Struct("=IHHII")


class RdmaError(OSError):
    """The kernel refused an RDMA netlink request, or has no RDMA subsystem (EPROTONOSUPPORT)."""


def message_type(command: int) -> int:
    return (RDMA_NL_NLDEV << 10) + command  # RDMA_NL_GET_TYPE(client, op)


class RdmaNetlink:
    """One NETLINK_RDMA socket, in the namespace of the thread that opens it."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_RDMA)
        except OSError as exc:
            raise RdmaError(exc.errno, f"no RDMA netlink here: {exc.strerror}") from None
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RdmaNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, command: int, flags: int, attrs: bytes = b"") -> list[dict[int, bytes]]:
        """Send one request; the attributes of every reply message (several for a dump)."""
        self.seq += 1
        self.sock.send(_HEADER.pack(_HEADER.size + len(attrs), message_type(command), NLM_F_REQUEST | flags,
                                    self.seq, 0) + attrs)
        replies: list[dict[int, bytes]] = []
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size: offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise RdmaError(code, os.strerror(code))
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append(parse_attrs(payload))
                if not flags & NLM_F_DUMP:
                    return replies

    def netns_mode(self) -> str:
        """"shared" or "exclusive"."""
        replies = self._request(RDMA_NLDEV_CMD_SYS_GET, 0)
        value = replies[0].get(RDMA_NLDEV_SYS_ATTR_NETNS_MODE) if replies else None
        return "exclusive" if value is not None and value[0] == 0 else "shared"

    def device_index(self, name: str) -> int | None:
        """The index of the RDMA device `name` in this namespace; None if it is not here."""
        for attrs in self._request(RDMA_NLDEV_CMD_GET, NLM_F_DUMP):
            if attrs.get(RDMA_NLDEV_ATTR_DEV_NAME, b"").rstrip(b"\0").decode() == name:
                return int(struct.unpack("=I", attrs[RDMA_NLDEV_ATTR_DEV_INDEX][:4])[0])
        return None

    def move(self, name: str, netns_fd: int) -> bool:
        """Move the RDMA device `name` from this namespace to `netns_fd`; False if it is not here."""
        index = self.device_index(name)
        if index is None:
            return False
        self._request(RDMA_NLDEV_CMD_SET, NLM_F_ACK, set_netns_attrs(index, netns_fd))
        return True


def set_netns_attrs(index: int, netns_fd: int) -> bytes:
    return u32(RDMA_NLDEV_ATTR_DEV_INDEX, index) + u32(RDMA_NLDEV_NET_NS_FD, netns_fd)


def exclusive_mode() -> bool:
    """True when the RDMA subsystem isolates devices per namespace; False when shared or absent."""
    try:
        with RdmaNetlink() as rdma:
            return rdma.netns_mode() == "exclusive"
    except RdmaError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.ENOENT, errno.EOPNOTSUPP):
            return False  # no RDMA subsystem (this kernel): nothing is isolated, nothing to move
        raise
