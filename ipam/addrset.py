"""Pools, blocks, exclusions and fixed ranges as address sets (netaddr's IPSet), for the cluster store.

What a node may hand out from one block is: the block, intersected with the pool's ranges, minus the
network and broadcast addresses, the gateway, the exclusions and the fixed ranges. The allocator
still picks the address (ipam/allocator.py); this module only says which spans it may pick from.
"""

from __future__ import annotations

import ipaddress

from netaddr import IPNetwork, IPRange, IPSet

from ipam.config import PoolSpec, Range, parse_exclusion
from ipam.crd import IPPoolSpec


def allocatable(pool: IPPoolSpec) -> IPSet:
    """Every address of the pool that may be handed out (to blocks or reservations)."""
    out = IPSet()
    for rng in pool.range_set():
        out.add(IPRange(str(rng.first), str(rng.last)))
    gateway = pool.range_set()[0].gateway_ip
    if gateway is not None:
        out.remove(str(gateway))
    for item in pool.exclude:
        first, last = parse_exclusion(item)
        out.remove(IPRange(str(first), str(last)))
    return out


def fixed(pool: IPPoolSpec) -> IPSet:
    """The addresses kept for IPReservations (inside the allocatable set)."""
    out = IPSet(IPRange(r.start, r.end) for r in pool.fixed_ranges)
    return out & allocatable(pool)


def for_blocks(pool: IPPoolSpec) -> IPSet:
    return allocatable(pool) - fixed(pool)


def candidate_blocks(pool: IPPoolSpec) -> list[str]:
    """The pool's blocks that hold at least one address a node may hand out, in address order."""
    usable = for_blocks(pool)
    return [str(cidr) for cidr in IPNetwork(pool.subnet).subnet(pool.block_prefix) if usable & IPSet([cidr])]


def block_capacity(pool: IPPoolSpec, cidr: str) -> int:
    return int((for_blocks(pool) & IPSet([cidr])).size)


def to_ranges(pool: IPPoolSpec, addresses: IPSet) -> list[Range]:
    """An address set as host-local ranges of the pool's subnet (what the allocator walks)."""
    return [Range(subnet=pool.subnet, range_start=str(r[0]), range_end=str(r[-1]), gateway=pool.gateway)
            for r in addresses.iter_ipranges()]


def spec_for(pool: IPPoolSpec, addresses: IPSet) -> PoolSpec | None:
    """A one-range-set PoolSpec over `addresses` (None when empty), carrying the pool's routes."""
    ranges = to_ranges(pool, addresses)
    return PoolSpec(ranges=[ranges], routes=pool.routes) if ranges else None


def overlaps(a: IPPoolSpec, b: IPPoolSpec) -> bool:
    return ipaddress.ip_network(a.subnet).overlaps(ipaddress.ip_network(b.subnet))
