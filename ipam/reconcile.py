"""The agent's reconcile: release cluster-pool addresses whose pod is gone for good.

A runtime that lost a DEL (a crash, a node reboot, a bug) leaves an address held; CNI GC covers
runtimes that call it, this pass covers the rest. It only looks at attachments whose ADD named a pod
(CNI_ARGS K8S_POD_NAMESPACE / K8S_POD_NAME, and K8S_POD_UID when given), and releases one only when
every check says it is dead, in this order:

1. the attachment is older than `min_age` (an ADD in flight is never a candidate);
2. the network namespace path recorded at ADD no longer exists on this node (no API call needed to
   keep a live one; an attachment without a recorded netns is kept);
3. the pod is gone from the API: GET answers 404, or the pod of that name has another UID (it was
   deleted and re-created; the new pod has its own attachment). Any other answer keeps it;
4. steps 2-3 held on two passes in a row (a suspect is only released on the next pass).

The release itself runs under the agent's lock for that container (no ADD/DEL of it in flight) and
re-reads the row first. Each release is logged with its reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from cni.spec.hostroot import host_path
from ipam.cluster import ClusterStore
from ipam.kubeapi import ApiError

log = logging.getLogger("railnet.ipam.reconcile")

Guard = Callable[[str], AbstractContextManager[None]]  # the agent's per-container serialisation


@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str
    pool: str
    network: str
    addresses: tuple[str, ...]
    pod: str
    uid: str
    netns: str
    created: float

    @property
    def key(self) -> tuple[str, str]:
        return self.container_id, self.ifname


class Reconciler:
    def __init__(self, cluster: ClusterStore, guard: Guard, *, interval: float = 60.0,
                 min_age: float = 60.0) -> None:
        self.cluster = cluster
        self.guard = guard
        self.interval = interval
        self.min_age = min_age
        self.suspects: dict[tuple[str, str], str] = {}  # key -> why, from the previous pass
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ipam-reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # the loop must outlive any one bad pass
                log.exception("reconcile pass failed")

    def attachments(self) -> list[Attachment]:
        rows = self.cluster.store.db.connection().execute(
            "SELECT a.container_id, a.ifname, a.pool, a.network, a.address, p.pod, p.uid, p.netns, a.created "
            "FROM ipam_allocation a JOIN cluster_pod p USING (container_id, ifname) "
            "ORDER BY a.container_id, a.ifname, a.rangeset").fetchall()
        grouped: dict[tuple[str, str, str, str], list[tuple[str, str, str, str, float]]] = {}
        for cid, ifname, pool, network, address, pod, uid, netns, created in rows:
            grouped.setdefault((cid, ifname, pool, network), []).append((address, pod, uid, netns, created))
        out = []
        for (cid, ifname, pool, network), items in grouped.items():
            _, pod, uid, netns, _ = items[0]
            out.append(Attachment(cid, ifname, pool, network, tuple(i[0] for i in items), pod, uid, netns,
                                  max(i[4] for i in items)))
        return out

    def why_dead(self, att: Attachment, now: float) -> str | None:
        """The reason to release `att`, or None to keep it (every doubt keeps it)."""
        if now - att.created < self.min_age or not att.netns or os.path.exists(host_path(att.netns)):
            return None
        namespace, _, name = att.pod.partition("/")
        try:
            pod = self.cluster.api.get_pod(namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return f"netns {att.netns} is gone and pod {att.pod} does not exist"
            log.warning("reconcile: cannot read pod %s (%s); keeping %s", att.pod, exc, att.addresses)
            return None
        uid = str(pod.get("metadata", {}).get("uid", ""))
        if att.uid and uid and uid != att.uid:
            return f"netns {att.netns} is gone and pod {att.pod} was re-created (uid {att.uid} -> {uid})"
        return None

    def run_once(self) -> list[tuple[Attachment, str]]:
        """One pass; returns what it released, with why."""
        self.passes += 1
        now = time.time()
        suspects: dict[tuple[str, str], str] = {}
        released: list[tuple[Attachment, str]] = []
        for att in self.attachments():
            why = self.why_dead(att, now)
            if why is None:
                continue
            if att.key not in self.suspects:
                suspects[att.key] = why  # released on the next pass if it still looks dead
                continue
            if self._release(att, why):
                released.append((att, why))
        self.suspects = suspects
        self._forget_orphans()
        return released

    def _release(self, att: Attachment, why: str) -> bool:
        store = self.cluster.store
        with self.guard(att.container_id):
            still = store.held(att.container_id, att.ifname, att.pool, att.network)
            if sorted(still) != sorted(att.addresses):
                return False  # a DEL or a new ADD came first: leave it to them
            store.release(att.container_id, att.ifname, att.pool, att.network)
        log.info("reconcile released", extra={"fields": {
            "cid": att.container_id, "ifname": att.ifname, "pool": att.pool, "network": att.network,
            "addresses": list(att.addresses), "pod": att.pod, "why": why}})
        return True

    def _forget_orphans(self) -> None:
        """Pod records of attachments that hold nothing any more (DEL, GC, or an ADD that failed).

        Each under the container's lock: an ADD writes its record before its address."""
        orphan = ("NOT EXISTS (SELECT 1 FROM ipam_allocation a WHERE a.container_id = cluster_pod.container_id "
                  "AND a.ifname = cluster_pod.ifname)")
        db = self.cluster.store.db
        for cid, ifname in db.connection().execute(f"SELECT container_id, ifname FROM cluster_pod WHERE {orphan}"
                                                   ).fetchall():
            with self.guard(cid), db.transaction() as conn:
                conn.execute(f"DELETE FROM cluster_pod WHERE container_id=? AND ifname=? AND {orphan}",
                             (cid, ifname))
