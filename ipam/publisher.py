"""Publishes a node's block allocations to the IPPoolBlock statuses, in batches, and gives back blocks
that stayed empty for the grace period.

One pass every `interval` seconds: for each block whose allocations changed since the last pass, one
status patch. The node's SQLite file stays the authority: a block object that disappeared while the
node still holds addresses in it is created again; a claim left half-done by a kill is settled.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from cni.spec.errors import CniError
from ipam import addrset
from ipam.cluster import ClusterStore
from ipam.crd import block_name
from ipam.kubeapi import ApiError

log = logging.getLogger("railnet.ipam.publisher")


class Publisher:
    def __init__(self, cluster: ClusterStore) -> None:
        self.cluster = cluster
        self._published: dict[str, tuple[tuple[str, str, str, str], ...]] = {}
        self._claim_after: dict[str, float] = {}  # pool -> when to try claiming ahead again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="block-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(ApiError):
            self.run_once()  # a last batch, so the cluster view matches what this node holds

    def _run(self) -> None:
        while not self._stop.wait(self.cluster.interval):
            try:
                self.run_once()
            except ApiError as exc:
                log.warning("publishing blocks failed: %s", exc)
            except Exception:  # the loop must outlive any one bad pass
                log.exception("publishing blocks failed")

    def run_once(self) -> None:
        c = self.cluster
        conn = c.store.db.connection()
        for pool_name, cidr in conn.execute("SELECT pool, cidr FROM cluster_block WHERE state='claiming' "
                                            "AND since < ?", (time.time() - 5,)).fetchall():
            c.settle_claim(pool_name, cidr)
        blocks = conn.execute("SELECT pool, cidr, state, empty_since FROM cluster_block "
                              "WHERE state IN ('claimed', 'releasing')").fetchall()
        by_pool: dict[str, list[tuple[str, str, str, str]]] = {}
        for row in conn.execute("SELECT a.pool, a.address, a.container_id, a.ifname, coalesce(p.pod, '') "
                                "FROM ipam_allocation a LEFT JOIN cluster_pod p USING (container_id, ifname)"):
            by_pool.setdefault(row[0], []).append(row[1:])
        now = time.time()
        free = self._headroom(blocks, by_pool)
        for pool_name, cidr, state, empty_since in blocks:
            net = ipaddress.ip_network(cidr)
            inside = tuple(sorted(a for a in by_pool.get(pool_name, []) if ipaddress.ip_address(a[0]) in net))
            name = block_name(pool_name, cidr)
            if state == "releasing" or (not inside and empty_since is not None and now - empty_since > c.grace
                                        and self._may_release(pool_name, cidr, free)):
                self._release(pool_name, cidr)
                continue
            if not inside and empty_since is None:
                self._set_empty(pool_name, cidr, now)
            elif inside and empty_since is not None:
                self._set_empty(pool_name, cidr, None)
            if self._published.get(name) != inside:
                self._publish(pool_name, cidr, name, inside)

    def _headroom(self, blocks: list[tuple[str, str, str, float | None]],
                  by_pool: dict[str, list[tuple[str, str, str, str]]]) -> dict[str, tuple[int, int, int]]:
        """Per pool in use on this node: (free addresses in its blocks, addresses held, headroom wanted). When
        free falls below the headroom, one more block is claimed here, off the ADD path, so that an ADD
        rarely waits for a claim (the tail of the ADD latency)."""
        c = self.cluster
        out: dict[str, tuple[int, int, int]] = {}
        pools = c.pools.all()
        for pool_name in sorted({b[0] for b in blocks if b[2] == "claimed"}):
            pool = pools.get(pool_name)
            if pool is None:
                continue
            cidrs = [b[1] for b in blocks if b[0] == pool_name and b[2] == "claimed"]
            capacity = sum(addrset.block_capacity(pool, cidr) for cidr in cidrs)
            nets = [ipaddress.ip_network(cidr) for cidr in cidrs]
            held = sum(1 for a in by_pool.get(pool_name, []) if any(ipaddress.ip_address(a[0]) in n for n in nets))
            want = max(1, addrset.block_capacity(pool, cidrs[0]) // 4) if cidrs else 0
            out[pool_name] = (capacity - held, held, want)
            if held and capacity - held < want and time.monotonic() >= self._claim_after.get(pool_name, 0.0):
                try:
                    c.claim(pool_name, pool, known=c._blocks(pool_name))
                except CniError as exc:  # the pool is full, or the API server is away: ADDs will say so
                    log.debug("claim ahead for pool %s: %s", pool_name, exc.msg)
                    self._claim_after[pool_name] = time.monotonic() + 10.0
        return out

    def _may_release(self, pool_name: str, cidr: str, free: dict[str, tuple[int, int, int]]) -> bool:
        """An empty block goes back unless the node still uses the pool and needs the block as headroom."""
        spare, held, want = free.get(pool_name, (0, 0, 0))
        pool = self.cluster.pools.all().get(pool_name)
        if not held or pool is None:
            return True
        left = spare - addrset.block_capacity(pool, cidr)
        if left < want:
            return False
        free[pool_name] = (left, held, want)
        return True

    def _publish(self, pool_name: str, cidr: str, name: str, inside: tuple[tuple[str, str, str, str], ...]) -> None:
        pool = self.cluster.pools.all().get(pool_name)
        status: dict[str, Any] = {
            "allocated": len(inside),
            "allocations": [{"address": a, "containerId": cid, "ifname": ifn, **({"pod": pod} if pod else {})}
                            for a, cid, ifn, pod in inside],
            "published": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if pool is not None:
            status["capacity"] = addrset.block_capacity(pool, cidr)
        try:
            self.cluster.api.patch_block_status(name, status)
        except ApiError as exc:
            if exc.status != 404 or pool is None:
                raise
            # The object went away (a controller, a person) while this node still holds the block: the
            # node is the authority, so the claim is made again. Another node taking it is a conflict.
            log.warning("block %s vanished; claiming it again", name)
            try:
                self.cluster.api.create_block(self.cluster.block_body(pool_name, pool, cidr))
            except ApiError as again:
                if again.status == 409:
                    log.error("block %s is now claimed by another node while this node holds %d addresses "
                              "in it: duplicates possible, see `railnet ipam audit`", name, len(inside))
                raise
            self.cluster.api.patch_block_status(name, status)
        self._published[name] = inside

    def _set_empty(self, pool_name: str, cidr: str, since: float | None) -> None:
        with self.cluster.store.db.transaction() as db:
            db.execute("UPDATE cluster_block SET empty_since=? WHERE pool=? AND cidr=?", (since, pool_name, cidr))

    def _release(self, pool_name: str, cidr: str) -> None:
        c = self.cluster
        net = ipaddress.ip_network(cidr)
        with c.gate.exclusive():  # no ADD in flight: nothing can land in the block from here on
            rows = c.store.db.connection().execute("SELECT address FROM ipam_allocation WHERE pool=?",
                                                   (pool_name,)).fetchall()
            if any(ipaddress.ip_address(r[0]) in net for r in rows):
                c._mark(pool_name, cidr, "claimed")
                self._set_empty(pool_name, cidr, None)
                return
            c._mark(pool_name, cidr, "releasing")
        name = block_name(pool_name, cidr)
        try:
            obj = c.api.get_block(name)
            if obj.get("spec", {}).get("node") == c.node:
                c.api.delete_block(name, uid=obj["metadata"]["uid"])
        except ApiError as exc:
            if exc.status != 404:
                raise  # stays 'releasing': the next pass tries again; no ADD uses it meanwhile
        c._forget(pool_name, cidr)
        self._published.pop(name, None)
        log.info("released empty block", extra={"fields": {"pool": pool_name, "cidr": cidr}})
