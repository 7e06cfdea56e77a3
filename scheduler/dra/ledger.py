"""Which devices claims hold: every allocated claim's results, plus the allocations railnet decided
and is still writing (so the next decision already sees them).

A device that is not ``allowMultipleAllocations`` is held whole by one result; a shareable one
(a NIC with consumable bandwidth) is held by the sum of its results' ``consumedCapacity`` and is
free for a share while every capacity has room left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from scheduler.dra.api import Device, DeviceKey, Result


class Ledger:
    def __init__(self) -> None:
        self.uses: dict[DeviceKey, dict[tuple[str, str, str], Result]] = {}  # device -> (claim uid, request, share) -> result
        self.by_claim: dict[str, tuple[Result, ...]] = {}

    def set(self, uid: str, results: Iterable[Result] | None) -> set[DeviceKey]:
        """Record (or with None, drop) what claim ``uid`` holds; returns the devices whose use changed."""
        changed: set[DeviceKey] = set()
        for r in self.by_claim.pop(uid, ()):
            uses = self.uses.get(r.key)
            if uses is not None:
                uses.pop((uid, r.request, r.share_id or ""), None)
                if not uses:
                    del self.uses[r.key]
            changed.add(r.key)
        if results:
            kept = tuple(results)
            self.by_claim[uid] = kept
            for r in kept:
                self.uses.setdefault(r.key, {})[(uid, r.request, r.share_id or "")] = r
                changed.add(r.key)
        return changed

    def used(self, key: DeviceKey) -> bool:
        return bool(self.uses.get(key))

    def remaining(self, device: Device, extra: Iterable[Result] = ()) -> Mapping[str, int] | None:
        """Capacity left on a shareable device (after ``extra`` tentative results); None when it is held whole."""
        uses = list((self.uses.get(device.key) or {}).values()) + [r for r in extra if r.key == device.key]
        if not device.shareable:
            return None if uses else dict(device.capacity)
        left = dict(device.capacity)
        for r in uses:
            for name, amount in r.consumed.items():
                left[name] = left.get(name, 0) - amount
        return left
