"""IPAM: allocation logic (property tests) and the SQLite store under processes and kill -9."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni.spec.errors import CniError
from ipam.allocator import next_free
from ipam.config import IpamConf, PoolSpec, Range
from ipam.sqlite import Database
from ipam.store import IpamStore

SPEC = PoolSpec(ranges=[[Range(subnet="10.5.0.0/26", rangeStart="10.5.0.2", rangeEnd="10.5.0.40")],
                        [Range(subnet="fd00:5::/120")]], exclude=["10.5.0.10-10.5.0.12"])


@settings(max_examples=200, deadline=None)
@given(used=st.sets(st.integers(0, 63)), excluded=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 5))),
       after=st.one_of(st.none(), st.integers(0, 63)))
def test_next_free_never_returns_taken_addresses(used: set[int], excluded: list[tuple[int, int]],
                                                 after: int | None) -> None:
    rng = Range(subnet="10.6.0.0/26")
    base = int(ipaddress.ip_address("10.6.0.0"))
    used_abs = {base + u for u in used}
    ex = [(base + lo, base + lo + width) for lo, width in excluded]
    picked = next_free([rng], used_abs, ex, None if after is None else ipaddress.ip_address(base + after))
    allowed = [v for v in range(int(rng.first), int(rng.last) + 1)
               if v not in used_abs and v != int(rng.gateway_ip or 0) and not any(lo <= v <= hi for lo, hi in ex)]
    if not allowed:
        assert picked is None
        return
    assert picked is not None
    value = int(picked[1])
    assert value in allowed
    if after is not None:  # round-robin: the first allowed address after the cursor, wrapping
        cursor = base + after
        later = [v for v in allowed if v > cursor]
        assert value == (later[0] if later else allowed[0])


def test_host_local_legacy_form_and_defaults() -> None:
    conf = IpamConf.model_validate({"type": "railnet-ipam", "subnet": "10.7.0.0/24"})
    rng = conf.inline_spec().ranges[0][0]
    assert str(rng.first) == "10.7.0.1" and str(rng.last) == "10.7.0.254" and str(rng.gateway_ip) == "10.7.0.1"


def test_idempotent_release_and_gc(tmp_path: Path) -> None:
    store = IpamStore(Database(tmp_path / "db"))
    first = store.allocate("p", SPEC, "c1", "net1")
    assert [str(a.address) for a in first] == ["10.5.0.2", "fd00:5::2"]
    assert store.allocate("p", SPEC, "c1", "net1") == first  # a retried ADD gets the same addresses
    store.allocate("p", SPEC, "c2", "net1")
    assert store.count("p") == 4
    stale = store.gc("p", {("c2", "net1")})
    assert {s[1] for s in stale} == {"c1"} and store.count("p") == 2
    assert store.release("c2", "net1") == 2 and store.count() == 0


def test_exhaustion_rolls_back_the_whole_attachment(tmp_path: Path) -> None:
    store = IpamStore(Database(tmp_path / "db"))
    spec = PoolSpec(ranges=[[Range(subnet="10.8.0.0/24")], [Range(subnet="fd00:8::/126")]])  # v6: ::2, ::3
    store.allocate("p", spec, "a", "net1")
    store.allocate("p", spec, "b", "net1")
    with pytest.raises(CniError) as exc:
        store.allocate("p", spec, "c", "net1")
    assert exc.value.code == 102 and "IPv6" in exc.value.msg
    assert store.count("p") == 4  # no IPv4 address was kept for the failed attachment


def _allocate_many(path: str, worker: int, count: int) -> None:
    store = IpamStore(Database(Path(path)))
    spec = PoolSpec(ranges=[[Range(subnet="10.9.0.0/22")]])
    for i in range(count):
        store.allocate("p", spec, f"w{worker}-{i}", "net1")


def test_concurrent_processes_never_share_an_address(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    IpamStore(Database(Path(path)))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_allocate_many, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT address FROM ipam_allocation").fetchall()
    assert len(rows) == 160 and len({r[0] for r in rows}) == 160


def _allocate_forever(path: str) -> None:
    store = IpamStore(Database(Path(path)))
    spec = PoolSpec(ranges=[[Range(subnet="10.10.0.0/16")]])
    i = 0
    while True:
        store.allocate("p", spec, f"c{i}", "net1")
        if i % 3 == 0:
            store.release(f"c{i}", "net1")
        i += 1


def test_kill_dash_nine_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    IpamStore(Database(Path(path)))
    ctx = multiprocessing.get_context("spawn")
    for delay in (0.3, 0.45, 0.6):
        proc = ctx.Process(target=_allocate_forever, args=(path,))
        proc.start()
        time.sleep(delay)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = db.execute("SELECT address, container_id FROM ipam_allocation").fetchall()
        assert len({r[0] for r in rows}) == len(rows)
        # the store is usable afterwards
        store = IpamStore(Database(Path(path)))
        store.allocate("p", PoolSpec(ranges=[[Range(subnet="10.10.0.0/16")]]), "after-kill", "net1")
        assert store.release("after-kill", "net1") == 1
