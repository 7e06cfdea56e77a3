"""The embedded IPAM store: allocations in SQLite.

One row per allocated address, with the primary key (pool, address) as the guard against
double allocation. Every change runs in a `BEGIN IMMEDIATE` transaction, so concurrent ADDs
from several threads or processes serialise on SQLite's write lock, and a process killed at
any point leaves either the whole allocation or none of it (WAL journal).
"""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from cni.spec.errors import INVALID_CONFIG, IO_FAILURE, POOL_EXHAUSTED, CniError
from ipam.allocator import contains, is_excluded, next_free
from ipam.config import IPAddress, PoolSpec, Range
from ipam.sqlite import Database

# `network` is the CNI config's `name`: a named pool is shared by networks, and GC of one network
# must only release that network's rows. '' = a row written before the column existed whose
# network is unknown (kept until DEL or a GC that lists it claims it).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ipam_allocation (
    pool TEXT NOT NULL,
    address TEXT NOT NULL,
    rangeset INTEGER NOT NULL,
    container_id TEXT NOT NULL,
    ifname TEXT NOT NULL,
    created REAL NOT NULL,
    network TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (pool, address)
);
CREATE INDEX IF NOT EXISTS ipam_allocation_owner ON ipam_allocation (container_id, ifname);
CREATE TABLE IF NOT EXISTS ipam_cursor (
    pool TEXT NOT NULL,
    rangeset INTEGER NOT NULL,
    last TEXT NOT NULL,
    PRIMARY KEY (pool, rangeset)
);
"""
_INDEXES = "CREATE INDEX IF NOT EXISTS ipam_allocation_network ON ipam_allocation (network);"
QUARANTINE = "railnet-quarantine"  # owner of addresses another host was found using (conflict probe)
_INLINE = "net:"  # pool-name prefix of a network's inline ranges (see IpamService.resolve)


@dataclass(frozen=True)
class Allocation:
    pool: str
    address: IPAddress
    rangeset: int
    range: Range
    container_id: str
    ifname: str


def _describe(rangeset: list[Range]) -> str:
    return ", ".join(f"{r.first}-{r.last} ({r.subnet})" for r in rangeset)


def assign_requested(pool: str, spec: PoolSpec, requested: Iterable[IPAddress]) -> dict[int, IPAddress]:
    """Map each requested IP to the range set that grants it, with host-local's rules: inside a range,
    never a gateway or an excluded address, one per range set, and every request granted."""
    excluded = spec.excluded()
    out: dict[int, IPAddress] = {}
    for addr in requested:
        family = f"IPv{addr.version}"
        holders = [i for i, rs in enumerate(spec.ranges) if contains(rs, addr) is not None]
        if not holders:
            sets = [_describe(rs) for rs in spec.ranges if rs[0].network.version == addr.version]
            raise CniError(INVALID_CONFIG, f"requested IP {addr} is outside pool {pool!r}",
                           f"request an address inside {'; '.join(sets)}" if sets
                           else f"the pool has no {family} range; request addresses of its families only")
        gateways = {r.gateway_ip for i in holders for r in spec.ranges[i]}
        if addr in gateways:
            raise CniError(INVALID_CONFIG, f"requested IP {addr} is the gateway of pool {pool!r}",
                           "the gateway is never handed out; request another address")
        if is_excluded(addr, excluded):
            raise CniError(INVALID_CONFIG, f"requested IP {addr} is excluded from pool {pool!r}",
                           "the pool's exclude list holds it; request another address")
        free = [i for i in holders if i not in out]
        if not free:
            taken = ", ".join(str(out[i]) for i in holders)
            raise CniError(INVALID_CONFIG, f"requested IP {addr} has no range set left in pool {pool!r}",
                           f"each range set grants one address and {taken} already takes the {family} "
                           f"one; request at most one address per range set")
        out[free[0]] = addr
    return out


class IpamStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(_SCHEMA)
        self._migrate()
        db.ensure(_INDEXES)

    def _migrate(self) -> None:
        """State files from before allocations were scoped by network get the column in place.
        Inline ranges name their network in the pool name, so those rows are attributed exactly."""
        if "network" in self.db.columns("ipam_allocation"):
            return
        with self.db.transaction() as db:
            if "network" in {row[1] for row in db.execute("PRAGMA table_info(ipam_allocation)")}:
                return  # another process migrated first
            db.execute("ALTER TABLE ipam_allocation ADD COLUMN network TEXT NOT NULL DEFAULT ''")
            db.execute("UPDATE ipam_allocation SET network=substr(pool, ?) WHERE substr(pool, 1, ?)=?",
                       (len(_INLINE) + 1, len(_INLINE), _INLINE))

    def allocate(
        self,
        pool: str,
        spec: PoolSpec,
        container_id: str,
        ifname: str,
        requested: list[IPAddress] | None = None,
        network: str = "",
    ) -> list[Allocation]:
        """One address per range set for (container_id, ifname) of `network`; idempotent for a retried ADD."""
        wanted = assign_requested(pool, spec, requested or [])
        excluded = spec.excluded()
        with self.db.transaction() as db:
            owner = (pool, container_id, ifname, network)
            db.execute("UPDATE ipam_allocation SET network=? WHERE pool=? AND container_id=? AND ifname=? "
                       "AND network=''", (network, pool, container_id, ifname))
            held = {
                row[0]: ipaddress.ip_address(row[1])
                for row in db.execute(
                    "SELECT rangeset, address FROM ipam_allocation "
                    "WHERE pool=? AND container_id=? AND ifname=? AND network=?", owner)
            }
            used: set[IPAddress] | None = None
            out: list[Allocation] = []
            for index, rangeset in enumerate(spec.ranges):
                if index in held:
                    addr = held[index]
                    if index in wanted and wanted[index] != addr:
                        raise CniError(INVALID_CONFIG, f"{container_id}/{ifname} already holds {addr}, "
                                       f"not the requested {wanted[index]}", "DEL the attachment first")
                    rng = contains(rangeset, addr) or rangeset[0]
                    out.append(Allocation(pool, addr, index, rng, container_id, ifname))
                    continue
                if used is None:
                    used = {ipaddress.ip_address(r[0])
                            for r in db.execute("SELECT address FROM ipam_allocation WHERE pool=?", (pool,))}
                picked = self._pick(db, pool, index, rangeset, used, excluded, wanted.get(index))
                if picked is None:
                    family = f"IPv{rangeset[0].network.version}"
                    raise CniError(POOL_EXHAUSTED, f"IP pool {pool!r} has no free {family} address",
                                   f"all addresses of {', '.join(r.subnet for r in rangeset)} are in use; "
                                   "widen the range or release addresses (DEL/GC)")
                rng, addr = picked
                used.add(addr)
                db.execute("INSERT INTO ipam_allocation (pool, address, rangeset, container_id, ifname, "
                           "created, network) VALUES (?,?,?,?,?,?,?)",
                           (pool, str(addr), index, container_id, ifname, time.time(), network))
                db.execute("INSERT OR REPLACE INTO ipam_cursor VALUES (?,?,?)", (pool, index, str(addr)))
                out.append(Allocation(pool, addr, index, rng, container_id, ifname))
            return out

    @staticmethod
    def _pick(db: sqlite3.Connection, pool: str, index: int, rangeset: list[Range], used: set[IPAddress],
              excluded: list[tuple[IPAddress, IPAddress]], wanted: IPAddress | None) -> tuple[Range, IPAddress] | None:
        if wanted is not None:  # a fixed IP asked for by the runtime, already checked against the pool's rules
            if wanted in used:
                raise CniError(POOL_EXHAUSTED, f"requested IP {wanted} is already allocated in pool {pool!r}",
                               "release it first or request another address")
            rng = contains(rangeset, wanted)
            assert rng is not None
            return rng, wanted
        row = db.execute("SELECT last FROM ipam_cursor WHERE pool=? AND rangeset=?", (pool, index)).fetchone()
        after = ipaddress.ip_address(row[0]) if row else None
        return next_free(rangeset, used, excluded, after)

    def release(self, container_id: str, ifname: str, pool: str | None = None, network: str | None = None) -> int:
        """Release what (container_id, ifname) holds; narrowed to a pool and network when known."""
        where, args = "container_id=? AND ifname=?", [container_id, ifname]
        if pool is not None:
            where, args = f"{where} AND pool=?", [*args, pool]
        if network is not None:
            where, args = f"{where} AND network IN (?, '')", [*args, network]
        with self.db.transaction() as db:
            return db.execute(f"DELETE FROM ipam_allocation WHERE {where}", args).rowcount

    def quarantine(self, pool: str, address: str, why: str) -> None:
        """Move `address` from its owner to the quarantine owner: kept out of allocation until DEL'd by hand
        (`CNI_CONTAINERID=railnet-quarantine`, `CNI_IFNAME=<address>`); GC of a network never touches it."""
        with self.db.transaction() as db:
            db.execute("UPDATE ipam_allocation SET container_id=?, ifname=?, network='', created=? "
                       "WHERE pool=? AND address=?", (QUARANTINE, address, time.time(), pool, address))
        del why  # the caller logs it

    def held(self, container_id: str, ifname: str, pool: str, network: str | None = None) -> list[str]:
        where, args = "pool=? AND container_id=? AND ifname=?", [pool, container_id, ifname]
        if network is not None:
            where, args = f"{where} AND network IN (?, '')", [*args, network]
        rows = self.db.connection().execute(
            f"SELECT address FROM ipam_allocation WHERE {where} ORDER BY rangeset", args)
        return [r[0] for r in rows]

    def gc(self, network: str, valid: set[tuple[str, str]], pool: str | None = None) -> list[tuple[str, str, str]]:
        """Release every allocation of `network` whose (container_id, ifname) is not in `valid`.

        Rows of another network are never touched, whichever pool they share. Each stale row is
        released on its own, so one that fails does not keep the rest; the failures are reported
        afterwards. Rows of unknown network (older state) that `valid` lists in `pool` are claimed."""
        if pool is not None:
            with self.db.transaction() as db:
                db.executemany("UPDATE ipam_allocation SET network=? WHERE pool=? AND container_id=? AND ifname=? "
                               "AND network=''", [(network, pool, c, i) for c, i in valid])
        rows = self.db.connection().execute(
            "SELECT pool, address, container_id, ifname FROM ipam_allocation WHERE network=?", (network,)).fetchall()
        released: list[tuple[str, str, str]] = []
        failed: list[str] = []
        for row_pool, address, cid, ifname in rows:
            if (cid, ifname) in valid:
                continue
            try:
                with self.db.transaction() as db:
                    db.execute("DELETE FROM ipam_allocation WHERE pool=? AND address=? AND network=?",
                               (row_pool, address, network))
            except sqlite3.Error as exc:
                failed.append(f"{address} of {cid}/{ifname}: {exc}")
                continue
            released.append((address, cid, ifname))
        if failed:
            raise CniError(IO_FAILURE, f"GC of network {network!r} could not release {len(failed)} of "
                           f"{len(failed) + len(released)} stale addresses", "; ".join(failed))
        return released

    def count(self, pool: str | None = None, network: str | None = None) -> int:
        where, args = "1=1", list[str]()
        if pool is not None:
            where, args = f"{where} AND pool=?", [*args, pool]
        if network is not None:
            where, args = f"{where} AND network=?", [*args, network]
        row = self.db.connection().execute(f"SELECT COUNT(*) FROM ipam_allocation WHERE {where}", args).fetchone()
        return int(row[0])

    def has_free(self, pool: str, spec: PoolSpec) -> list[bool]:
        """For each range set, whether one more address could be allocated (STATUS)."""
        conn = self.db.connection()
        used = {ipaddress.ip_address(r[0])
                for r in conn.execute("SELECT address FROM ipam_allocation WHERE pool=?", (pool,))}
        excluded = spec.excluded()
        return [next_free(rs, used, excluded, None) is not None for rs in spec.ranges]
