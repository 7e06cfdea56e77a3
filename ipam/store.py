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
from dataclasses import dataclass

from cni.spec.errors import INVALID_CONFIG, POOL_EXHAUSTED, CniError
from ipam.allocator import contains, next_free
from ipam.config import IPAddress, PoolSpec, Range
from ipam.sqlite import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ipam_allocation (
    pool TEXT NOT NULL,
    address TEXT NOT NULL,
    rangeset INTEGER NOT NULL,
    container_id TEXT NOT NULL,
    ifname TEXT NOT NULL,
    created REAL NOT NULL,
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


@dataclass(frozen=True)
class Allocation:
    pool: str
    address: IPAddress
    rangeset: int
    range: Range
    container_id: str
    ifname: str


class IpamStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(_SCHEMA)

    def allocate(
        self,
        pool: str,
        spec: PoolSpec,
        container_id: str,
        ifname: str,
        requested: list[IPAddress] | None = None,
    ) -> list[Allocation]:
        """One address per range set for (container_id, ifname); idempotent for a retried ADD."""
        excluded = spec.excluded()
        with self.db.transaction() as db:
            held = {
                row[0]: ipaddress.ip_address(row[1])
                for row in db.execute(
                    "SELECT rangeset, address FROM ipam_allocation WHERE pool=? AND container_id=? AND ifname=?",
                    (pool, container_id, ifname),
                )
            }
            used: set[int] | None = None
            out: list[Allocation] = []
            for index, rangeset in enumerate(spec.ranges):
                if index in held:
                    addr = held[index]
                    rng = contains(rangeset, addr) or rangeset[0]
                    out.append(Allocation(pool, addr, index, rng, container_id, ifname))
                    continue
                if used is None:
                    used = {int(ipaddress.ip_address(r[0]))
                            for r in db.execute("SELECT address FROM ipam_allocation WHERE pool=?", (pool,))}
                picked = self._pick(db, pool, index, rangeset, used, excluded, requested or [])
                if picked is None:
                    family = f"IPv{rangeset[0].network.version}"
                    raise CniError(POOL_EXHAUSTED, f"IP pool {pool!r} has no free {family} address",
                                   f"all addresses of {', '.join(r.subnet for r in rangeset)} are in use; "
                                   "widen the range or release addresses (DEL/GC)")
                rng, addr = picked
                used.add(int(addr))
                db.execute("INSERT INTO ipam_allocation VALUES (?,?,?,?,?,?)",
                           (pool, str(addr), index, container_id, ifname, time.time()))
                db.execute("INSERT OR REPLACE INTO ipam_cursor VALUES (?,?,?)", (pool, index, str(addr)))
                out.append(Allocation(pool, addr, index, rng, container_id, ifname))
            return out

    @staticmethod
    def _pick(db: sqlite3.Connection, pool: str, index: int, rangeset: list[Range], used: set[int],
              excluded: list[tuple[int, int]], requested: list[IPAddress]) -> tuple[Range, IPAddress] | None:
        family = rangeset[0].network.version
        wanted = [a for a in requested if a.version == family]
        if wanted:  # a fixed IP asked for by the runtime ('ips' capability or IP= in CNI_ARGS)
            addr = wanted[0]
            rng = contains(rangeset, addr)
            if rng is None:
                raise CniError(INVALID_CONFIG, f"requested IP {addr} is outside pool {pool!r}",
                               f"pick an address inside {', '.join(r.subnet for r in rangeset)}")
            if int(addr) in used:
                raise CniError(POOL_EXHAUSTED, f"requested IP {addr} is already allocated in pool {pool!r}",
                               "release it first or request another address")
            return rng, addr
        row = db.execute("SELECT last FROM ipam_cursor WHERE pool=? AND rangeset=?", (pool, index)).fetchone()
        after = ipaddress.ip_address(row[0]) if row else None
        return next_free(rangeset, used, excluded, after)

    def release(self, container_id: str, ifname: str, pool: str | None = None) -> int:
        with self.db.transaction() as db:
            if pool is None:
                cur = db.execute("DELETE FROM ipam_allocation WHERE container_id=? AND ifname=?",
                                 (container_id, ifname))
            else:
                cur = db.execute("DELETE FROM ipam_allocation WHERE pool=? AND container_id=? AND ifname=?",
                                 (pool, container_id, ifname))
            return cur.rowcount

    def held(self, container_id: str, ifname: str, pool: str) -> list[str]:
        rows = self.db.connection().execute(
            "SELECT address FROM ipam_allocation WHERE pool=? AND container_id=? AND ifname=? ORDER BY rangeset",
            (pool, container_id, ifname))
        return [r[0] for r in rows]

    def gc(self, pool: str, valid: set[tuple[str, str]]) -> list[tuple[str, str, str]]:
        """Release every allocation of `pool` whose (container_id, ifname) is not in `valid`."""
        with self.db.transaction() as db:
            rows = db.execute("SELECT address, container_id, ifname FROM ipam_allocation WHERE pool=?",
                              (pool,)).fetchall()
            stale = [(a, c, i) for a, c, i in rows if (c, i) not in valid]
            db.executemany("DELETE FROM ipam_allocation WHERE pool=? AND address=?",
                           [(pool, a) for a, _, _ in stale])
            return stale

    def count(self, pool: str | None = None) -> int:
        conn = self.db.connection()
        if pool is None:
            return int(conn.execute("SELECT COUNT(*) FROM ipam_allocation").fetchone()[0])
        return int(conn.execute("SELECT COUNT(*) FROM ipam_allocation WHERE pool=?", (pool,)).fetchone()[0])

    def has_free(self, pool: str, spec: PoolSpec) -> list[bool]:
        """For each range set, whether one more address could be allocated (STATUS)."""
        conn = self.db.connection()
        used = {int(ipaddress.ip_address(r[0]))
                for r in conn.execute("SELECT address FROM ipam_allocation WHERE pool=?", (pool,))}
        excluded = spec.excluded()
        return [next_free(rs, used, excluded, None) is not None for rs in spec.ranges]
