"""Pure address selection: the next free address of a range set, round-robin like host-local.

Round-robin (start after the last address handed out) delays reuse of a just-released
address, which keeps stale ARP/neighbour entries on peers from pointing at a new pod.
The walk is host-local's: from the address after the cursor to the end of its range, then on
through the following ranges of the set, wrapping round to the cursor range's start.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence

from ipam.config import IPAddress, Range, Span


def _walk(ranges: Sequence[Range], after: IPAddress | None) -> Iterator[tuple[Range, int]]:
    home = next((i for i, r in enumerate(ranges) if after is not None and r.holds(after)), None)
    if home is None or after is None:  # no cursor, or the pool changed under it: from the start
        for rng in ranges:
            yield from ((rng, v) for v in range(int(rng.first), int(rng.last) + 1))
        return
    cursor = int(after)
    rng = ranges[home]
    yield from ((rng, v) for v in range(cursor + 1, int(rng.last) + 1))
    for step in range(1, len(ranges)):
        other = ranges[(home + step) % len(ranges)]
        yield from ((other, v) for v in range(int(other.first), int(other.last) + 1))
    yield from ((rng, v) for v in range(int(rng.first), cursor + 1))


def next_free(
    rangeset: Iterable[Range],
    used: Iterable[IPAddress],
    excluded: Iterable[Span],
    after: IPAddress | None,
) -> tuple[Range, IPAddress] | None:
    """First address after `after` (wrapping) that is not used, excluded or a gateway.

    `used` and `excluded` may hold both families; only the set's own family counts."""
    ranges = list(rangeset)
    if not ranges:
        return None
    family = ranges[0].network.version
    taken = {int(a) for a in used if a.version == family}
    taken |= {int(g) for g in (r.gateway_ip for r in ranges) if g is not None and g.version == family}
    spans = [(int(lo), int(hi)) for lo, hi in excluded if lo.version == family]
    for rng, value in _walk(ranges, after):
        if value in taken or any(lo <= value <= hi for lo, hi in spans):
            continue
        return rng, ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)
    return None


def contains(rangeset: Iterable[Range], addr: IPAddress) -> Range | None:
    return next((rng for rng in rangeset if rng.holds(addr)), None)


def is_excluded(addr: IPAddress, excluded: Iterable[Span]) -> bool:
    return any(lo.version == addr.version and int(lo) <= int(addr) <= int(hi) for lo, hi in excluded)
