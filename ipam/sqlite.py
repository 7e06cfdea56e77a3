"""The agent's state file: SQLite in WAL mode, one connection per thread, short write transactions.

Shared by the IPAM allocations and the CNI attachment records, so one file holds a node's state.
The state names every pod and its addresses, so the directory is 0700 (when this code creates it)
and the file, with its -wal and -shm companions, 0600.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DIR_MODE = 0o700
# Writers of one file inside one process queue here, in arrival order, instead of in SQLite's
# busy handler: that handler sleeps (1, 2, 5 ... 100 ms) and retries, so under ten concurrent
# writers a transaction could wait seconds while the lock sat free between its naps (the p99 tail
# of the embedded store). Other processes still meet SQLite's own lock and its busy timeout.
# The queue is FIFO (threading.Lock is not fair: a releasing thread often takes it straight back).


class FifoLock:
    """A mutex granted in arrival order: each waiter parks on its own lock, handed over on release."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._waiters: collections.deque[threading.Lock] = collections.deque()

    def __enter__(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append(gate)
        gate.acquire()  # released by the holder that hands the mutex over; _held stays True

    def __exit__(self, *exc: object) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False


_WRITE_LOCKS: dict[str, FifoLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()
FILE_MODE = 0o600
COMPANIONS = ("", "-wal", "-shm", "-journal")


def _make_private_dir(path: Path) -> None:
    """Create the state dir 0700; a directory that already exists is the operator's and is left alone."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return  # made by someone else meanwhile: theirs
    os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask


def _make_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it: SQLite gives its -wal/-shm files the
    database file's mode. A file left readable by an older version is tightened too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in COMPANIONS[1:]:
        companion = Path(f"{path}{suffix}")
        try:
            if companion.stat().st_mode & 0o077:
                os.chmod(companion, FILE_MODE)
        except FileNotFoundError:
            pass


class Database:
    """A SQLite file with one connection per thread (sqlite3 connections are not thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _make_private_dir(path.parent)
        _make_private_file(path)
        self._local = threading.local()
        with _WRITE_LOCKS_GUARD:
            self._write_lock = _WRITE_LOCKS.setdefault(str(path.resolve()), FifoLock())

    def ensure(self, schema: str) -> None:
        """Create tables if missing (idempotent DDL; executescript commits by itself)."""
        self.connection().executescript(schema)

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.connection().execute(f"PRAGMA table_info({table})")}

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; on any failure the connection leaves the transaction and the
        original error propagates.

        SQLite rolls back by itself on some errors (SQLITE_FULL, a trigger's RAISE(ROLLBACK), ...), so
        an unconditional ROLLBACK would fail and hide the real error; a failed COMMIT (e.g. a deferred
        constraint) leaves the transaction open, which would poison the thread's next BEGIN."""
        conn = self.connection()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if not conn.in_transaction:
                    raise sqlite3.OperationalError("SQLite rolled the transaction back before COMMIT")
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise


def _rollback(conn: sqlite3.Connection) -> None:
    if not conn.in_transaction:
        return
    # The caller's exception is the one that matters; a rollback that fails here means the
    # connection is broken, and its next use reports that on its own.
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
