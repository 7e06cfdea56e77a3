"""Pure address selection: the next free address of a range set, round-robin like host-local.

Round-robin (start after the last address handed out) delays reuse of a just-released
address, which keeps stale ARP/neighbour entries on peers from pointing at a new pod.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from ipam.config import IPAddress, Range


def _candidates(rng: Range, after: int | None) -> Iterator[int]:
    first, last = int(rng.first), int(rng.last)
    start = first if after is None or not first <= after < last else after + 1
    yield from range(start, last + 1)
    yield from range(first, start)


def next_free(
    rangeset: Iterable[Range],
    used: set[int],
    excluded: list[tuple[int, int]],
    after: IPAddress | None,
) -> tuple[Range, IPAddress] | None:
    """First address after `after` (wrapping) that is not used, excluded or a gateway."""
    ranges = list(rangeset)
    gateways = {int(g) for g in (r.gateway_ip for r in ranges) if g is not None}

    def holds_cursor(rng: Range) -> bool:
        return after is not None and rng.network.version == after.version and int(rng.first) <= int(after) <= int(rng.last)

    # Start in the range that holds the cursor, then go through the others in order.
    ranges.sort(key=lambda rng: not holds_cursor(rng))
    cursor = int(after) if after is not None else None
    for rng in ranges:
        for value in _candidates(rng, cursor):
            if value in used or value in gateways or any(lo <= value <= hi for lo, hi in excluded):
                continue
            return rng, ipaddress.ip_address(value)
    return None


def contains(rangeset: Iterable[Range], addr: IPAddress) -> Range | None:
    for rng in rangeset:
        if rng.network.version == addr.version and int(rng.first) <= int(addr) <= int(rng.last):
            return rng
    return None
