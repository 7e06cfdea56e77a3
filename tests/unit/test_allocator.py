"""next_free against a plain model: several ranges per set (rangeStart/rangeEnd), exclusions,
gateways, both families in `used`/`excluded`, IPv4 and IPv6, with and without a cursor."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ipam.allocator import next_free
from ipam.config import IPAddress, Range, Span

NETS = {4: ipaddress.ip_network("10.20.0.0/26"), 6: ipaddress.ip_network("fd00:20::/122")}  # 64 addresses each


def addr(family: int, offset: int) -> IPAddress:
    base = int(NETS[family].network_address) + offset
    return ipaddress.IPv4Address(base) if family == 4 else ipaddress.IPv6Address(base)


@st.composite
def rangesets(draw: st.DrawFn) -> tuple[int, list[Range]]:
    """1-3 disjoint ranges of one subnet, in any order, each with an optional explicit gateway."""
    family = draw(st.sampled_from([4, 6]))
    cuts = sorted(draw(st.sets(st.integers(1, 62), min_size=2, max_size=6)))
    spans = [(lo, hi) for lo, hi in zip(cuts[::2], cuts[1::2], strict=False)]
    spans = draw(st.permutations(spans))
    out = []
    for lo, hi in spans:
        gateway = draw(st.one_of(st.none(), st.integers(1, 62)))
        out.append(Range(subnet=str(NETS[family]), range_start=str(addr(family, lo)), range_end=str(addr(family, hi)),
                         gateway=None if gateway is None else str(addr(family, gateway))))
    return family, out


def model(ranges: list[Range], used: set[IPAddress], excluded: list[Span], after: IPAddress | None) -> IPAddress | None:
    """host-local's walk written plainly: list every address of the set in range order, rotate the
    list to start after the cursor (if a range holds it), take the first that is free."""
    family = ranges[0].network.version
    order = [addr(family, v - int(NETS[family].network_address))
             for r in ranges for v in range(int(r.first), int(r.last) + 1)]
    if after is not None and after in order:
        i = order.index(after)
        order = order[i + 1:] + order[:i + 1]
    gateways = {r.gateway_ip for r in ranges}
    for a in order:
        if a in used or a in gateways:
            continue
        if any(lo.version == a.version and int(lo) <= int(a) <= int(hi) for lo, hi in excluded):
            continue
        return a
    return None


offsets = st.integers(0, 63)


@settings(max_examples=400, deadline=None)
@given(rs=rangesets(), used=st.sets(st.tuples(st.sampled_from([4, 6]), offsets), max_size=50),
       excluded=st.lists(st.tuples(st.sampled_from([4, 6]), offsets, st.integers(0, 6)), max_size=4),
       cursor=st.one_of(st.none(), offsets))
def test_next_free_matches_the_model(rs: tuple[int, list[Range]], used: set[tuple[int, int]],
                                     excluded: list[tuple[int, int, int]], cursor: int | None) -> None:
    family, ranges = rs
    used_addrs = {addr(f, o) for f, o in used}
    spans = [(addr(f, lo), addr(f, min(lo + w, 63))) for f, lo, w in excluded]
    after = None if cursor is None else addr(family, cursor)
    picked = next_free(ranges, used_addrs, spans, after)
    expected = model(ranges, used_addrs, spans, after)
    assert (picked[1] if picked else None) == expected
    if picked is not None:
        assert picked[0].holds(picked[1])  # the range returned is the one holding the address


def test_walk_moves_on_to_the_next_range_before_wrapping() -> None:
    """The cursor at the end of its range: the next range comes first, not the cursor range's start."""
    ranges = [Range(subnet="10.1.0.0/24", range_start="10.1.0.10", range_end="10.1.0.12"),
              Range(subnet="10.1.0.0/24", range_start="10.1.0.50", range_end="10.1.0.52")]
    picked = next_free(ranges, set(), [], ipaddress.ip_address("10.1.0.11"))
    assert picked is not None and str(picked[1]) == "10.1.0.12"
    picked = next_free(ranges, {ipaddress.ip_address("10.1.0.12")}, [], ipaddress.ip_address("10.1.0.11"))
    assert picked is not None and str(picked[1]) == "10.1.0.50"


def test_other_family_never_blocks_an_address() -> None:
    """An IPv4 exclusion or used address has the same integer as a low IPv6 address; it must not count."""
    rng = Range(subnet="::/120", range_start="::10", range_end="::10", gateway="::1")
    v4 = ipaddress.IPv4Address(0x10)
    assert next_free([rng], {v4}, [(v4, v4)], None) == (rng, ipaddress.IPv6Address(0x10))
