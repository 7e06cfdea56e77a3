"""The host-port range and picker (jobs/ports.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from jobs.ports import PortRange, parse_ports, pick


def test_parse() -> None:
    assert PortRange.parse("20000-30000") == PortRange(20000, 30000)
    assert PortRange.parse(" 5000 ").size == 1
    for bad in ("30000-20000", "0-10", "1-70000", "a-b", "1-2-3", ""):
        with pytest.raises(ValueError):
            PortRange.parse(bad)


def test_pick_prefers_ports_no_pod_holds_and_never_a_port_held_on_the_pinned_node() -> None:
    span = PortRange(100, 109)
    held = Counter({p: 1 for p in range(100, 109)})  # only 109 is free cluster-wide
    assert pick(span, held) == 109
    assert pick(span, held, node_held={109}) in range(100, 109)
    assert pick(span, {}, node_held=set(range(100, 110))) is None


def test_pick_avoids_the_previous_port_unless_nothing_else_is_left() -> None:
    span = PortRange(7, 8)
    rng = random.Random(1)
    assert all(pick(span, {}, avoid={7}, rng=rng) == 8 for _ in range(20))
    assert pick(PortRange(7, 7), {}, avoid={7}) == 7


def test_least_used_spreads_holders_evenly() -> None:
    span = PortRange(1, 40)
    held: Counter[int] = Counter()
    rng = random.Random(7)
    for _ in range(100):
        port = pick(span, held, rng=rng)
        assert port is not None
        held[port] += 1
    assert max(held.values()) == 3  # ceil(100 / 40): a 4-node cluster can always separate them


def test_parse_ports_of_the_host_listeners_annotation() -> None:
    assert parse_ports("22, 2379-2381,31000") == {22, 2379, 2380, 2381, 31000}
    assert parse_ports("") == set()
    with pytest.raises(ValueError):
        parse_ports("22,x")
