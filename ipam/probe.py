"""IPv4 address conflict probe (RFC 5227 ARP probe) on the parent NIC, with a raw AF_PACKET socket.

Before an address of a pool with `conflictProbe: arp` is handed out, the agent broadcasts ARP probes
for it on the network's parent NIC (the config's `master`): sender IP 0.0.0.0, so no neighbour cache
learns anything. A reply from that address, or another host probing or announcing it, means a host
already uses it: the caller quarantines the address and tries another (ipam/plugin.py).

RFC 5227 waits 1-2 s per probe, which no pod start-up can afford; this waits `wait` seconds in all
(default 0.1 s, two probes): a host on the same L2 segment answers within a millisecond or two.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6
_ARP_HEAD = struct.pack("!HHBB", 1, 0x0800, 6, 4)  # Ethernet, IPv4, hlen 6, plen 4
DEFAULT_WAIT = 0.1
DEFAULT_PROBES = 2


def _probe_frame(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    arp = _ARP_HEAD + struct.pack("!H", 1) + mac + b"\0\0\0\0" + b"\0" * 6 + address.packed
    return _BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def conflicts(ifname: str, addresses: list[ipaddress.IPv4Address], wait: float = DEFAULT_WAIT,
              probes: int = DEFAULT_PROBES) -> set[ipaddress.IPv4Address]:
    """The addresses some other host on `ifname`'s segment already uses (OSError: the NIC is unusable)."""
    if not addresses:
        return set()
    wanted = {a.packed: a for a in addresses}
    found: set[ipaddress.IPv4Address] = set()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((ifname, ETH_P_ARP))
        mac: bytes = sock.getsockname()[4]
        frames = [_probe_frame(mac, a) for a in addresses]
        start = time.monotonic()
        deadline = start + wait
        sent = 0
        while True:
            now = time.monotonic()
            if sent < probes and now >= start + sent * wait / probes:
                for frame in frames:
                    sock.send(frame)
                sent += 1
            if now >= deadline or len(found) == len(wanted):
                return found
            next_send = start + sent * wait / probes if sent < probes else deadline
            ready, _, _ = select.select([sock], [], [], max(0.0, min(deadline, next_send) - now))
            if not ready:
                continue
            frame = sock.recv(128)
            if len(frame) < 42 or frame[12:14] != b"\x08\x06":
                continue
            op, sha, spa, tpa = struct.unpack("!H", frame[20:22])[0], frame[22:28], frame[28:32], frame[38:42]
            if sha == mac:
                continue  # our own probe, looped back
            if op == 2 and spa in wanted:
                found.add(wanted[spa])  # it answered: the address is in use
            elif op == 1 and (spa in wanted or (spa == b"\0\0\0\0" and tpa in wanted)):
                found.add(wanted[spa if spa in wanted else tpa])  # someone announces or probes it too
