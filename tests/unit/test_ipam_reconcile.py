"""The agent's reconcile (ipam/reconcile.py) over a real SQLite store and a fake API: what it keeps, what it
releases, and that it needs two passes and the container's lock to release anything."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ipam.cluster import ClusterStore, PodRef
from ipam.config import PoolSpec, Range
from ipam.kubeapi import ApiError
from ipam.reconcile import Reconciler
from ipam.sqlite import Database
from ipam.store import IpamStore

SPEC = PoolSpec(ranges=[[Range(subnet="10.50.0.0/24")]])


class FakeApi:
    def __init__(self) -> None:
        self.pods: dict[str, str] = {}  # ns/name -> uid
        self.down = False

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        if self.down:
            raise ApiError(0, "unreachable")
        uid = self.pods.get(f"{namespace}/{name}")
        if uid is None:
            raise ApiError(404, "not found")
        return {"metadata": {"uid": uid}}


def _setup(tmp_path: Path) -> tuple[ClusterStore, FakeApi, list[str], Reconciler]:
    api = FakeApi()
    cluster = ClusterStore(IpamStore(Database(tmp_path / "db")), api, "n0")  # type: ignore[arg-type]
    held: list[str] = []

    @contextmanager
    def guard(cid: str) -> Iterator[None]:
        held.append(cid)
        yield

    return cluster, api, held, Reconciler(cluster, guard, min_age=0)


def _add(cluster: ClusterStore, tmp_path: Path, cid: str, pod: str | None, uid: str = "", live: bool = False) -> Path:
    netns = tmp_path / f"ns-{cid}"
    if live:
        netns.touch()
    if pod:
        ns, name = pod.split("/")
        cluster._remember(PodRef(ns, name, uid), cid, "net1", str(netns))
    cluster.store.allocate("p", SPEC, cid, "net1", network="net")
    return netns


def _held(cluster: ClusterStore, cid: str) -> bool:
    return bool(cluster.store.held(cid, "net1", "p", "net"))


def test_releases_only_when_pod_and_netns_are_gone_and_only_on_the_second_pass(tmp_path: Path) -> None:
    cluster, api, held, rec = _setup(tmp_path)
    api.pods = {"ns/alive": "u1", "ns/again": "u-new"}
    _add(cluster, tmp_path, "alive", "ns/alive", "u1")               # pod there, netns gone: kept
    _add(cluster, tmp_path, "busy", "ns/busy", "u2", live=True)      # pod gone, netns there: kept
    _add(cluster, tmp_path, "dead", "ns/dead", "u3")                 # both gone: released
    _add(cluster, tmp_path, "again", "ns/again", "u-old")            # re-created pod: released
    _add(cluster, tmp_path, "nopod", None)                           # no pod named at ADD: kept
    assert rec.run_once() == []
    assert set(rec.suspects) == {("dead", "net1"), ("again", "net1")}
    released = rec.run_once()
    assert sorted(a.container_id for a, _ in released) == ["again", "dead"]
    whys = dict((a.container_id, why) for a, why in released)
    assert "does not exist" in whys["dead"] and "re-created" in whys["again"]
    assert set(held) >= {"again", "dead"}
    assert [c for c in ("alive", "busy", "dead", "again", "nopod") if _held(cluster, c)] == ["alive", "busy", "nopod"]
    rows = cluster.store.db.connection().execute("SELECT container_id FROM cluster_pod").fetchall()
    assert sorted(r[0] for r in rows) == ["alive", "busy"]  # the released ones' records are dropped


def test_doubt_keeps_the_address(tmp_path: Path) -> None:
    cluster, api, _, rec = _setup(tmp_path)
    _add(cluster, tmp_path, "x", "ns/x", "u1")
    api.down = True  # the API server does not answer: nothing is released
    assert rec.run_once() == [] and rec.run_once() == []
    api.down = False
    rec.min_age = 3600  # too young
    assert rec.run_once() == [] and rec.run_once() == []
    rec.min_age = 0
    assert rec.run_once() == []  # first sight: only a suspect
    api.pods["ns/x"] = "u1"  # back (a slow watch, a restore): the suspicion is dropped
    assert rec.run_once() == [] and not rec.suspects
    del api.pods["ns/x"]
    assert rec.run_once() == [] and len(rec.run_once()) == 1 and not _held(cluster, "x")


def test_old_state_files_get_the_new_pod_columns(tmp_path: Path) -> None:
    path = tmp_path / "db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE cluster_pod (container_id TEXT NOT NULL, ifname TEXT NOT NULL, pod TEXT NOT NULL, "
                 "PRIMARY KEY (container_id, ifname))")
    conn.execute("INSERT INTO cluster_pod VALUES ('c', 'net1', 'ns/p')")
    conn.commit()
    conn.close()
    cluster = ClusterStore(IpamStore(Database(path)), FakeApi(), "n0")  # type: ignore[arg-type]
    assert {"uid", "netns"} <= cluster.store.db.columns("cluster_pod")
