"""IPAM: the SQLite store (network scoping, requested IPs, transactions, file modes, processes and
kill -9), config validation and the service's CNI codes. next_free's property tests: test_allocator.py."""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import json
import multiprocessing
import os
import signal
import sqlite3
import stat
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from cni.spec.errors import CHECK_FAILED, INVALID_CONFIG, IO_FAILURE, POOL_EXHAUSTED, CniError
from cni.spec.request import CniRequest
from ipam.config import IpamConf, PoolSpec, Range, parse_ipam
from ipam.plugin import IpamService
from ipam.pools import PoolRegistry
from ipam.sqlite import Database
from ipam.store import IpamStore

SPEC = PoolSpec(ranges=[[Range(subnet="10.5.0.0/26", range_start="10.5.0.2", range_end="10.5.0.40")],
                        [Range(subnet="fd00:5::/120")]], exclude=["10.5.0.10-10.5.0.12"])


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
    stale = store.gc("", {("c2", "net1")})
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




# ---- network scoping (review items 2/28) -------------------------------------------------------------


def _service(tmp_path: Path, pools: dict[str, Any]) -> IpamService:
    pools_dir = tmp_path / "pools"
    pools_dir.mkdir()
    for name, body in pools.items():
        (pools_dir / f"{name}.json").write_text(json.dumps(body))
    return IpamService(IpamStore(Database(tmp_path / "state" / "db")), PoolRegistry(pools_dir))


def _req(command: str, network: str, cid: str = "", ifname: str = "", args: dict[str, str] | None = None,
         extra: dict[str, Any] | None = None) -> CniRequest:
    config = {"cniVersion": "1.1.0", "name": network, "type": "railnet-macvlan",
              "ipam": {"type": "railnet-ipam", "pool": "rail0"}, **(extra or {})}
    return CniRequest(command, cid, "", ifname, args or {}, [], {}, config)


def test_gc_of_one_network_keeps_the_other_networks_addresses(tmp_path: Path) -> None:
    service = _service(tmp_path, {"rail0": {"subnet": "10.95.0.0/28"}})
    a = service.add(_req("ADD", "netA", "c1", "net1"))
    b1 = service.add(_req("ADD", "netB", "c1", "net2"))
    b2 = service.add(_req("ADD", "netB", "c2", "net1"))
    assert len({r["ips"][0]["address"] for r in (a, b1, b2)}) == 3
    released = service.gc(_req("GC", "netA", extra={"cni.dev/valid-attachments": []}))
    assert [(cid, ifname) for _, cid, ifname in released] == [("c1", "net1")]
    assert service.store.count("rail0", network="netB") == 2 and service.store.count("rail0") == 2
    service.check(_req("CHECK", "netB", "c1", "net2"))  # netB's attachments still hold their addresses
    # GC of netB releases only netB's stale row
    valid = [{"containerID": "c1", "ifname": "net2"}]
    released = service.gc(_req("GC", "netB", extra={"cni.dev/valid-attachments": valid}))
    assert [(cid, ifname) for _, cid, ifname in released] == [("c2", "net1")]
    assert service.store.held("c1", "net2", "rail0") == [b1["ips"][0]["address"].split("/")[0]]


def test_gc_continues_past_a_failing_record(tmp_path: Path) -> None:
    store = IpamStore(Database(tmp_path / "db"))
    spec = PoolSpec(ranges=[[Range(subnet="10.96.0.0/28")]])
    for cid in ("c0", "c1", "c2"):
        store.allocate("p", spec, cid, "net1", network="n")
    store.db.ensure("CREATE TRIGGER stuck BEFORE DELETE ON ipam_allocation WHEN OLD.container_id='c1' "
                    "BEGIN SELECT RAISE(ABORT, 'row is stuck'); END;")
    with pytest.raises(CniError) as exc:
        store.gc("n", set())
    assert exc.value.code == IO_FAILURE and "1 of 3" in exc.value.msg
    assert "c1/net1" in exc.value.details and "row is stuck" in exc.value.details
    assert store.count("p") == 1 and store.held("c1", "net1", "p")  # only the failing one is left


_OLD_SCHEMA = """
CREATE TABLE ipam_allocation (pool TEXT NOT NULL, address TEXT NOT NULL, rangeset INTEGER NOT NULL,
    container_id TEXT NOT NULL, ifname TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (pool, address));
CREATE INDEX ipam_allocation_owner ON ipam_allocation (container_id, ifname);
CREATE TABLE ipam_cursor (pool TEXT NOT NULL, rangeset INTEGER NOT NULL, last TEXT NOT NULL,
    PRIMARY KEY (pool, rangeset));
INSERT INTO ipam_allocation VALUES ('net:netA', '10.1.0.2', 0, 'c1', 'net1', 0);
INSERT INTO ipam_allocation VALUES ('rail0', '10.95.0.2', 0, 'c1', 'net2', 0);
INSERT INTO ipam_allocation VALUES ('rail0', '10.95.0.3', 0, 'c2', 'net2', 0);
"""


def test_state_file_without_network_column_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with sqlite3.connect(path) as old:
        old.executescript(_OLD_SCHEMA)
    store = IpamStore(Database(path))
    rows = store.db.connection().execute("SELECT pool, network FROM ipam_allocation ORDER BY address").fetchall()
    assert rows == [("net:netA", "netA"), ("rail0", ""), ("rail0", "")]  # inline pools name their network
    # a row of unknown network survives other networks' GC; a GC that lists it claims it
    assert store.gc("netB", set(), pool="rail0") == []
    assert store.gc("netC", {("c1", "net2")}, pool="rail0") == []
    assert store.count("rail0", network="netC") == 1
    assert [r[1] for r in store.gc("netC", set(), pool="rail0")] == ["c1"]
    assert store.release("c2", "net2", "rail0", "netD") == 1  # DEL of an unknown-network row still works
    IpamStore(Database(path))  # opening a migrated file again is a no-op


# ---- requested IPs obey the pool (item 8) ------------------------------------------------------------

FIXED = PoolSpec(ranges=[[Range(subnet="10.6.0.0/24", range_end="10.6.0.200", gateway="10.6.0.5")],
                         [Range(subnet="fd00:6::/64")]], exclude=["10.6.0.20-10.6.0.29"])


@pytest.mark.parametrize(("requested", "code", "words"), [
    (["10.6.0.5"], INVALID_CONFIG, "gateway"),
    (["10.6.0.25"], INVALID_CONFIG, "excluded"),
    (["10.6.0.250"], INVALID_CONFIG, "outside"),
    (["10.7.0.9"], INVALID_CONFIG, "outside"),
    (["10.6.0.0"], INVALID_CONFIG, "outside"),  # the network address
    (["10.6.0.30", "10.6.0.31"], INVALID_CONFIG, "10.6.0.31 has no range set left"),
    (["10.6.0.40"], POOL_EXHAUSTED, "already allocated"),
])
def test_requested_ips_obey_the_pool(tmp_path: Path, requested: list[str], code: int, words: str) -> None:
    store = IpamStore(Database(tmp_path / "db"))
    store.allocate("p", FIXED, "other", "net1", [ipaddress.ip_address("10.6.0.40")])
    with pytest.raises(CniError) as exc:
        store.allocate("p", FIXED, "c1", "net1", [ipaddress.ip_address(a) for a in requested])
    assert exc.value.code == code and words in exc.value.msg and exc.value.details
    assert store.count("p") == 2  # nothing was taken for the refused attachment


def test_requested_ip_of_a_family_without_range_set(tmp_path: Path) -> None:
    store = IpamStore(Database(tmp_path / "db"))
    with pytest.raises(CniError) as exc:
        store.allocate("p", PoolSpec(ranges=[[Range(subnet="10.6.0.0/24")]]), "c1", "net1",
                       [ipaddress.ip_address("fd00::5")])
    assert exc.value.code == INVALID_CONFIG and "no IPv6 range" in exc.value.details


def test_requested_ips_one_per_range_set(tmp_path: Path) -> None:
    store = IpamStore(Database(tmp_path / "db"))
    wanted = [ipaddress.ip_address("fd00:6::77"), ipaddress.ip_address("10.6.0.77")]
    got = store.allocate("p", FIXED, "c1", "net1", wanted)
    assert [str(a.address) for a in got] == ["10.6.0.77", "fd00:6::77"]
    assert store.allocate("p", FIXED, "c1", "net1", wanted) == got  # a retried ADD


def test_requested_ip_through_the_service(tmp_path: Path) -> None:
    service = _service(tmp_path, {"rail0": {"subnet": "10.95.0.0/28", "gateway": "10.95.0.1"}})
    with pytest.raises(CniError) as exc:
        service.add(_req("ADD", "netA", "c1", "net1", args={"IP": "10.95.0.1"}))
    assert exc.value.code == INVALID_CONFIG and "gateway" in exc.value.msg
    out = service.add(_req("ADD", "netA", "c1", "net1", extra={"runtimeConfig": {"ips": ["10.95.0.9/28"]}}))
    assert out["ips"][0]["address"] == "10.95.0.9/28"


# ---- subnets too small to allocate from (item 9) ----------------------------------------------------


@pytest.mark.parametrize(("subnet", "minimum"), [
    ("fd00::1/128", "/126"), ("fd00::/127", "/126"), ("10.0.0.0/31", "/30"), ("10.0.0.1/32", "/30"),
])
def test_subnet_too_small_is_invalid_config(subnet: str, minimum: str) -> None:
    with pytest.raises(CniError) as exc:
        parse_ipam({"type": "railnet-ipam", "ranges": [[{"subnet": subnet}]]})
    assert exc.value.code == INVALID_CONFIG and minimum in exc.value.details and "too small" in exc.value.details


def test_smallest_subnets_allocate(tmp_path: Path) -> None:
    store = IpamStore(Database(tmp_path / "db"))
    spec = parse_ipam({"type": "railnet-ipam", "ranges": [[{"subnet": "10.0.0.0/30"}], [{"subnet": "fd00::/126"}]]})
    got = store.allocate("p", spec.inline_spec(), "c1", "net1")
    assert [str(a.address) for a in got] == ["10.0.0.2", "fd00::2"]


def test_range_holding_only_the_gateway_is_refused() -> None:
    with pytest.raises(CniError) as exc:
        parse_ipam({"type": "railnet-ipam", "subnet": "10.0.0.0/24", "rangeStart": "10.0.0.1", "rangeEnd": "10.0.0.1"})
    assert exc.value.code == INVALID_CONFIG and "only the gateway" in exc.value.details


# ---- Database.transaction under faults (item 13) ----------------------------------------------------


def test_error_after_sqlite_rolled_back_propagates_and_connection_recovers(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    db.ensure("CREATE TABLE t (x INTEGER); CREATE TRIGGER boom BEFORE INSERT ON t WHEN NEW.x = 13 "
              "BEGIN SELECT RAISE(ROLLBACK, 'thirteen refused'); END;")
    with pytest.raises(sqlite3.IntegrityError, match="thirteen refused"), db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO t VALUES (13)")
    assert not db.connection().in_transaction
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (2)")
    assert db.connection().execute("SELECT x FROM t").fetchall() == [(2,)]


def test_swallowed_error_after_sqlite_rolled_back_is_not_a_silent_commit(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    db.ensure("CREATE TABLE t (x INTEGER); CREATE TRIGGER boom BEFORE INSERT ON t WHEN NEW.x = 13 "
              "BEGIN SELECT RAISE(ROLLBACK, 'thirteen refused'); END;")
    with pytest.raises(sqlite3.OperationalError, match="rolled the transaction back"), db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with contextlib.suppress(sqlite3.IntegrityError):
            conn.execute("INSERT INTO t VALUES (13)")
    assert db.connection().execute("SELECT COUNT(*) FROM t").fetchone() == (0,)


def test_failed_commit_propagates_and_leaves_no_open_transaction(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    db.ensure("CREATE TABLE parent (id INTEGER PRIMARY KEY); "
              "CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);")
    db.connection().execute("PRAGMA foreign_keys=ON")  # the deferred check runs at COMMIT, which fails
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), db.transaction() as conn:
        conn.execute("INSERT INTO child VALUES (99)")
    assert not db.connection().in_transaction
    with db.transaction() as conn:
        conn.execute("INSERT INTO parent VALUES (99)")
        conn.execute("INSERT INTO child VALUES (99)")
    assert db.connection().execute("SELECT COUNT(*) FROM child").fetchone() == (1,)


# ---- file modes (item 18) ---------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_is_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = IpamStore(Database(tmp_path / "state" / "railnet.db"))
        store.allocate("p", SPEC, "c1", "net1")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "state") == 0o700
    for name in ("railnet.db", "railnet.db-wal", "railnet.db-shm"):
        assert _mode(tmp_path / "state" / name) == 0o600, name


def test_existing_state_dir_keeps_its_mode_and_old_files_are_tightened(tmp_path: Path) -> None:
    state = tmp_path / "shared"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "railnet.db").touch(mode=0o644)
    os.chmod(state / "railnet.db", 0o644)
    IpamStore(Database(state / "railnet.db"))
    assert _mode(state) == 0o755  # not ours to change
    assert _mode(state / "railnet.db") == 0o600


# ---- CNI codes and layering (items 43, 46) -----------------------------------------------------------


def test_check_without_held_address_is_check_failed(tmp_path: Path) -> None:
    service = _service(tmp_path, {"rail0": {"subnet": "10.95.0.0/28"}})
    with pytest.raises(CniError) as exc:
        service.check(_req("CHECK", "netA", "c1", "net1"))
    assert exc.value.code == CHECK_FAILED


def test_ipam_depends_only_on_the_cni_spec_layer() -> None:
    root = Path(__file__).resolve().parents[2] / "ipam"
    bad = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.module != "cni" else [f"cni.{a.name}" for a in node.names]
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("cni", "netmanager", "scheduler")
                    and not n.startswith("cni.spec.") and n not in ("cni.spec", "cni.faults")]
    # cni.faults: the fault-injection points (stdlib only), shared with the attachment drivers
    assert not bad, f"ipam may import cni.spec.* and cni.faults only: {bad}"


# ---- kill -9 inside a write transaction (item 30) ---------------------------------------------------

DOOMED = PoolSpec(ranges=[[Range(subnet="10.10.0.0/16")]])


def _allocate_then_hang_in_a_write(path: str, ready: Connection) -> None:
    """Commit a few allocations, then start one more and stop inside its BEGIN IMMEDIATE transaction,
    after its row and a few MB of ballast were written (enough to spill uncommitted pages into the WAL),
    tell the parent, and wait for SIGKILL."""
    store = IpamStore(Database(Path(path)))
    for i in range(5):
        store.allocate("p", DOOMED, f"c{i}", "net1", network="n")
    conn = store.db.connection()
    conn.execute("PRAGMA cache_size=20")

    def hold() -> int:
        ready.send(os.path.getsize(f"{path}-wal"))
        signal.pause()
        return 0

    conn.create_function("hold", 0, hold)
    conn.execute("CREATE TEMP TRIGGER doomed AFTER INSERT ON main.ipam_allocation WHEN NEW.container_id='doomed' "
                 "BEGIN INSERT INTO ballast SELECT randomblob(4000) FROM ballast_src; SELECT hold(); END")
    store.allocate("p", DOOMED, "doomed", "net1", network="n")


def test_kill_dash_nine_inside_a_write_transaction(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    db = Database(Path(path))
    IpamStore(db)
    db.ensure("CREATE TABLE ballast (b BLOB); CREATE TABLE ballast_src (x INTEGER);"
              "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) "
              "INSERT INTO ballast_src SELECT i FROM n;")
    wal_before = os.path.getsize(f"{path}-wal")
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_allocate_then_hang_in_a_write, args=(path, child_end))
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not parent_end.poll(0.2):  # wait for the child's word, failing fast if it died first
            assert proc.is_alive(), "the child died before reaching the open write transaction"
            assert time.monotonic() < deadline, "the child never reached the open write transaction"
        wal_at_kill = parent_end.recv()
    finally:
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert wal_at_kill > wal_before + 1_000_000  # uncommitted pages were on disk when the kill landed

    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        owners = {r[0] for r in check.execute("SELECT container_id FROM ipam_allocation")}
        assert check.execute("SELECT COUNT(*) FROM ballast").fetchone()[0] == 0
    assert owners == {f"c{i}" for i in range(5)}  # committed rows kept, the interrupted one absent
    store = IpamStore(Database(Path(path)))  # usable afterwards, and the interrupted address is free
    again = store.allocate("p", DOOMED, "doomed", "net1", network="n")
    assert str(again[0].address) == "10.10.0.7" and store.count("p") == 6
