"""The cluster store: IPPool objects shared by every node, carved into per-node blocks, no global lock.

How an ADD is served (ipam/plugin.py calls `allocate`):
1. The pool comes from the agent's IPPool cache (ipam/poolcache.py); the node's labels and the
   network name are checked against the pool (error 111), overlap with other pools refused (113).
2. The address is picked by the embedded store (ipam/store.py) inside the blocks this node holds:
   the node's SQLite file is the authority for its blocks, so this step makes no API call.
3. Only when the node's blocks are full does it claim another: it creates the IPPoolBlock object
   named `<pool>-<block cidr>`. Create is atomic: the loser of a race gets 409 and tries the next
   block. The claim is written locally first ('claiming'), so a kill at any point is resolved on
   the next pass: the object exists with our node (adopt it) or it does not (forget the claim).
4. Fixed IPs (pools with fixedRanges, pods with an owner and a replica index) come from an
   IPReservation keyed by owner, whose address is claimed as a one-address IPPoolBlock; see
   ipam/reservations.py.

The publisher thread (ipam/publisher.py) writes each block's allocations to its status in batches
and releases blocks that stayed empty for the grace period.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from netaddr import IPSet

from cni import faults
from cni.spec.errors import (
    POOL_CONFLICT,
    POOL_EXHAUSTED,
    POOL_FULL,
    POOL_NOT_ALLOWED,
    POOL_UNKNOWN,
    TRY_AGAIN_LATER,
    CniError,
)
from ipam import addrset
from ipam.config import PoolSpec
from ipam.crd import BLOCK_KIND, GROUP, NODE_LABEL, POOL_LABEL, VERSION, IPPoolSpec, block_name
from ipam.gate import SharedExclusive
from ipam.kubeapi import ApiError, KubeApi
from ipam.poolcache import PoolCache
from ipam.store import Allocation, IpamStore

log = logging.getLogger("railnet.ipam.cluster")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_block (
    pool TEXT NOT NULL,
    cidr TEXT NOT NULL,
    state TEXT NOT NULL,            -- claiming | claimed | releasing
    since REAL NOT NULL,
    empty_since REAL,
    PRIMARY KEY (pool, cidr)
);
CREATE TABLE IF NOT EXISTS cluster_pod (
    container_id TEXT NOT NULL,
    ifname TEXT NOT NULL,
    pod TEXT NOT NULL,              -- namespace/name from CNI_ARGS
    uid TEXT NOT NULL DEFAULT '',   -- K8S_POD_UID, when the runtime passed it
    netns TEXT NOT NULL DEFAULT '', -- CNI_NETNS at ADD
    PRIMARY KEY (container_id, ifname)
);
"""
_POD_COLUMNS = ("uid", "netns")  # added after the first release: older state files get them on open


def unavailable(exc: ApiError, what: str) -> CniError:
    return CniError(TRY_AGAIN_LATER, f"{what}: the API server did not answer", f"{exc}; retry when it is back")


def api_failure(exc: ApiError, what: str) -> CniError:
    if exc.unavailable:
        return unavailable(exc, what)
    return CniError(POOL_CONFLICT, f"{what}: the API server refused", str(exc))


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_of(args: dict[str, str]) -> PodRef | None:
    ns, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    return PodRef(ns, name, args.get("K8S_POD_UID", "")) if ns and name else None


class ClusterStore:
    def __init__(self, store: IpamStore, api: KubeApi, node: str, *, grace: float = 30.0,
                 interval: float = 0.5) -> None:
        self.store = store
        self.api = api
        self.node = node
        self.grace = grace
        self.interval = interval
        store.db.ensure(SCHEMA)
        for column in _POD_COLUMNS:
            if column not in store.db.columns("cluster_pod"):
                with store.db.transaction() as db:
                    if column not in {r[1] for r in db.execute("PRAGMA table_info(cluster_pod)")}:
                        db.execute(f"ALTER TABLE cluster_pod ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
        self.pools = PoolCache(api)
        self.gate = SharedExclusive()  # allocations shared; giving a block back alone
        self._claim_locks: dict[str, threading.Lock] = {}
        self._claim_guard = threading.Lock()
        self._labels: tuple[float, dict[str, str]] | None = None
        from ipam.reservations import Reservations  # one module per job; they need each other's types
        self.reservations = Reservations(self)

    def start(self) -> None:
        self.pools.start()

    def stop(self) -> None:
        self.pools.stop()

    # ------------------------------------------------------------------------------ pool checks

    def pool(self, name: str) -> IPPoolSpec:
        try:
            found = self.pools.get(name)
        except ApiError as exc:
            raise api_failure(exc, f"cannot read IPPool {name!r}") from None
        if found is None:
            raise CniError(POOL_UNKNOWN, f"IP pool {name!r} does not exist in the cluster",
                           f"create the IPPool {name!r} (kubectl get ippools lists the pools)")
        if isinstance(found, str):
            raise CniError(POOL_CONFLICT, f"IPPool {name!r} is invalid", found)
        return found

    def node_labels(self) -> dict[str, str]:
        now = time.monotonic()
        if self._labels is None or now - self._labels[0] > 30:
            try:
                labels = self.api.get_node(self.node).get("metadata", {}).get("labels") or {}
            except ApiError as exc:
                if self._labels is None:
                    raise api_failure(exc, f"cannot read node {self.node!r}") from None
                labels = self._labels[1]  # keep the last known labels while the API server is away
            self._labels = (now, dict(labels))
        return self._labels[1]

    def check_usable(self, name: str, pool: IPPoolSpec, network: str) -> None:
        if pool.networks is not None and network not in pool.networks:
            raise CniError(POOL_NOT_ALLOWED, f"network {network!r} may not use IP pool {name!r}",
                           f"the pool's spec.networks is {pool.networks}; add the network or use another pool")
        if pool.node_selector:
            labels = self.node_labels()
            wrong = {k: v for k, v in pool.node_selector.items() if labels.get(k) != v}
            if wrong:
                raise CniError(POOL_NOT_ALLOWED, f"node {self.node!r} may not use IP pool {name!r}",
                               f"the pool's nodeSelector needs {wrong}; label the node or use another pool")
        for other, spec in self.pools.all().items():
            if other != name and addrset.overlaps(pool, spec):
                raise CniError(POOL_CONFLICT, f"IP pool {name!r} ({pool.subnet}) overlaps IP pool {other!r} "
                               f"({spec.subnet})", "pools must not overlap: delete or shrink one of them")

    # --------------------------------------------------------------------------------- allocate

    def allocate(self, name: str, network: str, container_id: str, ifname: str,
                 args: dict[str, str], netns: str = "") -> tuple[list[Allocation], PoolSpec]:
        pool = self.pool(name)
        self.check_usable(name, pool, network)
        pod = pod_of(args)
        self._remember(pod, container_id, ifname, netns)  # before the address: a kill leaves no orphan
        held = self.store.held(container_id, ifname, name, network)
        if held:  # a repeated ADD: the same address, wherever it came from
            spec = addrset.spec_for(pool, IPSet(held))
            assert spec is not None
            return self.store.allocate(name, spec, container_id, ifname, network=network), spec
        if pool.fixed_ranges and pod is not None:
            fixed = self.reservations.address_for(name, pool, pod)
            if fixed is not None:
                spec = addrset.spec_for(pool, IPSet([fixed]))
                assert spec is not None
                allocs = self.store.allocate(name, spec, container_id, ifname, [ipaddress.ip_address(fixed)],
                                             network=network)
                return allocs, spec
        for _ in range(64):
            with self.gate.shared():
                spec = self._blocks_spec(name, pool)
                if spec is not None:
                    try:
                        allocs = self.store.allocate(name, spec, container_id, ifname, network=network)
                        faults.point("ipam:allocated")  # committed locally, no reply yet
                        return allocs, spec
                    except CniError as exc:
                        if exc.code != POOL_EXHAUSTED:
                            raise
            self.claim(name, pool, known=self._blocks(name))
        raise CniError(POOL_FULL, f"IP pool {name!r} kept filling up while this node claimed blocks",
                       "retry the ADD")

    def _remember(self, pod: PodRef | None, cid: str, ifname: str, netns: str) -> None:
        """Who the attachment belongs to, for the block status and the agent's reconcile (ipam/reconcile.py)."""
        if pod is not None:
            with self.store.db.transaction() as db:
                db.execute("INSERT OR REPLACE INTO cluster_pod (container_id, ifname, pod, uid, netns) "
                           "VALUES (?,?,?,?,?)", (cid, ifname, pod.key, pod.uid, netns))

    def _blocks(self, name: str, states: tuple[str, ...] = ("claimed",)) -> list[str]:
        marks = ",".join("?" * len(states))
        rows = self.store.db.connection().execute(
            f"SELECT cidr FROM cluster_block WHERE pool=? AND state IN ({marks}) ORDER BY since", (name, *states))
        return [r[0] for r in rows]

    def _blocks_spec(self, name: str, pool: IPPoolSpec) -> PoolSpec | None:
        blocks = self._blocks(name)
        if not blocks:
            return None
        return addrset.spec_for(pool, addrset.for_blocks(pool) & IPSet(blocks))

    # ------------------------------------------------------------------------------------ claim

    def _claim_lock(self, name: str) -> threading.Lock:
        with self._claim_guard:
            return self._claim_locks.setdefault(name, threading.Lock())

    def claim(self, name: str, pool: IPPoolSpec, known: list[str]) -> str:
        """Claim one more block of `pool` for this node (one claimer per pool per node at a time)."""
        with self._claim_lock(name):
            if self._blocks(name) != known:
                return ""  # another thread claimed (or released) one meanwhile: try allocating again
            try:
                taken = {b["spec"]["cidr"] for b in self.api.list_blocks(f"{POOL_LABEL}={name}")}
            except ApiError as exc:
                raise api_failure(exc, f"IP pool {name!r}: this node's blocks are full and no block "
                                       "could be claimed") from None
            candidates = [c for c in addrset.candidate_blocks(pool) if c not in taken]
            # Start at a point that depends on the node, so nodes rarely race for the same block.
            if candidates:
                start = sum(self.node.encode()) % len(candidates)
                candidates = candidates[start:] + candidates[:start]
            for cidr in candidates:
                if self._claim_one(name, pool, cidr):
                    return cidr
            total = addrset.for_blocks(pool).size
            raise CniError(POOL_FULL, f"IP pool {name!r} is exhausted: all {len(addrset.candidate_blocks(pool))} "
                           f"blocks of /{pool.block_prefix} are claimed ({total} addresses)",
                           "widen the pool, add another pool, or release addresses (DEL/GC)")

    def block_body(self, name: str, pool: IPPoolSpec, cidr: str) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": BLOCK_KIND,
                "metadata": {"name": block_name(name, cidr), "labels": {POOL_LABEL: name, NODE_LABEL: self.node}},
                "spec": {"pool": name, "cidr": cidr, "node": self.node}}

    def _claim_one(self, name: str, pool: IPPoolSpec, cidr: str) -> bool:
        with self.store.db.transaction() as db:  # written before the create: a kill leaves a trace
            db.execute("INSERT OR REPLACE INTO cluster_block VALUES (?,?,?,?,NULL)",
                       (name, cidr, "claiming", time.time()))
        faults.point("ipam:block-claiming")  # recorded locally, not created yet
        try:
            self.api.create_block(self.block_body(name, pool, cidr))
        except ApiError as exc:
            if exc.status == 409:
                return self.settle_claim(name, cidr)
            if exc.unavailable:  # the create may or may not have happened: settle_claim decides later
                raise unavailable(exc, f"IP pool {name!r}: claiming block {cidr}") from None
            self._forget(name, cidr)
            raise api_failure(exc, f"IP pool {name!r}: claiming block {cidr}") from None
        faults.point("ipam:block-created")  # the object exists, the local row still says 'claiming'
        self._mark(name, cidr, "claimed")
        log.info("claimed block", extra={"fields": {"pool": name, "cidr": cidr}})
        return True

    def settle_claim(self, name: str, cidr: str) -> bool:
        """Whether the block object is ours; records the answer locally (claimed, or forgotten)."""
        try:
            obj = self.api.get_block(block_name(name, cidr))
        except ApiError as exc:
            if exc.status == 404:
                self._forget(name, cidr)
                return False
            raise unavailable(exc, f"IP pool {name!r}: checking block {cidr}") from None
        if obj.get("spec", {}).get("node") == self.node:
            self._mark(name, cidr, "claimed")
            return True
        self._forget(name, cidr)
        return False

    def _mark(self, name: str, cidr: str, state: str) -> None:
        with self.store.db.transaction() as db:
            db.execute("UPDATE cluster_block SET state=? WHERE pool=? AND cidr=?", (state, name, cidr))

    def _forget(self, name: str, cidr: str) -> None:
        with self.store.db.transaction() as db:
            db.execute("DELETE FROM cluster_block WHERE pool=? AND cidr=?", (name, cidr))
