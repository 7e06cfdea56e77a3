"""Host ports for host-network replicas: a range, and a picker that avoids ports other pods hold.

KubeDL draws ``rand.IntnRange(base, base+size-1)`` with no check at all (operator-anchors.md b.4).
railnet picks among the ports of the range that the fewest live pods declare as ``hostPort``
(cluster-wide, plus ports this controller assigned but has not yet seen in its cache), at random
among those, never the replica's previous port, and never a port held on the replica's node when
the template pins one. Because the port is also declared as ``hostPort``, any scheduler's NodePorts
filter keeps two holders off one node; least-used first keeps that filter from ever running out of
nodes while the range has room (each port is held by at most ceil(pods / range) pods).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int  # inclusive

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"20000-30000"`` (KubeDL's --hostnetwork-port-range format) or one port."""
        parts = text.strip().split("-")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"port range {text!r} is not LOW-HIGH (e.g. 20000-30000)") from None
        if len(values) == 1:
            values *= 2
        if len(values) != 2:
            raise ValueError(f"port range {text!r} is not LOW-HIGH (e.g. 20000-30000)")
        low, high = values
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"port range {text!r} must satisfy 1 <= LOW <= HIGH <= 65535")
        return cls(low, high)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def parse_ports(text: str) -> set[int]:
    """``"22,2379-2380,31000"`` -> the set of ports (the host-listeners annotation's format)."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if part:
            span = PortRange.parse(part)
            out.update(range(span.low, span.high + 1))
    return out


def pick(span: PortRange, held: Mapping[int, int], node_held: Collection[int] = (),
         avoid: Collection[int] = (), rng: random.Random | None = None) -> int | None:
    """A port of ``span``: fewest holders in ``held`` (port -> pods), none on the pinned node
    (``node_held``), not in ``avoid`` unless nothing else is left. None: every port is held on the node."""
    rng = rng or random.SystemRandom()
    blocked = set(node_held)
    best: list[int] = []
    fallback: list[int] = []
    low = None
    for port in range(span.low, span.high + 1):
        if port in blocked:
            continue
        if port in avoid:
            fallback.append(port)
            continue
        count = held.get(port, 0)
        if low is None or count < low:
            low, best = count, [port]
        elif count == low:
            best.append(port)
    if best:
        return rng.choice(best)
    return rng.choice(fallback) if fallback else None
