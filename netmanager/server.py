"""The agent's unix-socket server: who may talk to it, how many at once, and for how long.

- Only root may call: the socket is born 0600 in a 0700 directory, and every connection is also
  checked with SO_PEERCRED, because a file mode is one chmod away from being wrong and any caller
  controls CNI_NETNS (e.g. /proc/1/ns/net).
- A fixed pool of long-lived workers serves connections, so each worker's netlink socket and
  SQLite connection (thread-local) are reused across requests, and a burst of pods cannot make the
  agent start unbounded threads; extra connections wait in the accept queue.
- Reading a request has one deadline for the whole request, so a client that trickles bytes or
  sends nothing holds a worker for at most `read_deadline` seconds.
- One agent per socket: a socket path that still answers belongs to a live agent and is never
  unlinked; on exit only the socket inode this server created is removed.
- Rolling update (`takeover=True`): the next agent opens a control connection to the live one,
  binds a fresh socket beside the path and renames it over the path (atomic: every connect from
  then on reaches the new socket, where it waits in the accept queue, never refused), then sends
  HANDOVER on the control connection. The old agent accepts whatever is already in its own accept
  queue, finishes every call it holds, releases its state, and only then answers; the new one
  starts serving after that answer. No call is refused, none is served by both.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cni.spec.errors import DECODE_FAILURE, INVALID_ENVIRONMENT, CniError
from cni.spec.versions import LATEST
from cni.spec.wire import ShimRequest, WireError, decode_request, encode_reply

log = logging.getLogger("railnet.agent")

MAX_REQUEST = 4 << 20  # a network config with a large prevResult still fits
_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
TOO_LARGE = b"\0too large"  # a sentinel, compared by identity
HANDOVER = b"RAILNET-HANDOVER\n"  # the successor's request on its control connection
HANDED_OVER = b"handed over\n"


class SocketInUse(RuntimeError):
    pass


class TakeoverFailed(RuntimeError):
    pass


def peer_uid(conn: socket.socket) -> tuple[int, int]:
    pid, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid


def _live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
        return True
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()


def _error_reply(code: int, msg: str, details: str) -> bytes:
    import json  # only on the error path

    return encode_reply(1, json.dumps(CniError(code, msg, details).to_object(LATEST)))


class Server:
    def __init__(self, path: Path, serve: Callable[[ShimRequest], tuple[int, str]], workers: int = 8,
                 read_deadline: float = 10.0, allowed_uid: int = 0, takeover: bool = False) -> None:
        self.path = path
        self.serve = serve
        self.read_deadline = read_deadline
        self.allowed_uid = allowed_uid
        self._queue: queue.Queue[socket.socket | None] = queue.Queue()
        self._stopping = threading.Event()
        self._predecessor: socket.socket | None = None  # control connection to the agent we replace
        self.handover: socket.socket | None = None  # a successor's control connection, answered by main
        self.sock = self._listen(takeover)
        self._inode = os.stat(path).st_ino
        self._workers = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                         for i in range(workers)]

    def _listen(self, takeover: bool) -> socket.socket:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True)  # ours: born root-only (never chmod someone else's dir)
        if self.path.exists() or self.path.is_symlink():
            if _live(self.path):
                if not takeover:
                    raise SocketInUse(f"another railnet agent is serving {self.path}")
                return self._take_over()
            self.path.unlink()  # left by an agent that died
        return self._bind(self.path)

    def _bind(self, path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window with wider permissions
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        sock.listen(1024)  # a node starting many pods at once bursts CNI calls
        return sock

    def _take_over(self) -> socket.socket:
        """Control connection to the live agent, then our fresh socket renamed over the path."""
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.settimeout(5.0)
        try:
            control.connect(str(self.path))
        except OSError as exc:
            control.close()
            raise TakeoverFailed(f"cannot reach the agent serving {self.path}: {exc}") from None
        fresh = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fresh.unlink(missing_ok=True)
        sock = self._bind(fresh)
        os.rename(fresh, self.path)  # atomic: from here on every connect reaches our accept queue
        self._predecessor = control
        log.info("took over the agent socket; asking the previous agent to hand over",
                 extra={"fields": {"socket": str(self.path)}})
        return sock

    def await_predecessor(self, timeout: float = 120.0) -> None:
        """After a takeover: send HANDOVER and wait until the previous agent has finished its calls and
        released its state. Calls made meanwhile wait in our accept queue."""
        control = self._predecessor
        if control is None:
            return
        self._predecessor = None
        deadline = time.monotonic() + timeout
        try:
            control.sendall(HANDOVER)
            control.shutdown(socket.SHUT_WR)
            reply = b""
            while (left := deadline - time.monotonic()) > 0:
                control.settimeout(left)
                chunk = control.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except OSError as exc:
            raise TakeoverFailed(f"the previous agent did not hand over {self.path}: {exc}") from None
        finally:
            control.close()
        if reply != HANDED_OVER:
            raise TakeoverFailed(f"the previous agent did not hand over {self.path} within {timeout:.0f}s "
                                 f"(answered {reply[:80]!r})")

    def serve_forever(self) -> None:
        for worker in self._workers:
            worker.start()
        self.sock.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                log.warning("accept failed: %s", exc)
                time.sleep(0.05)
                continue
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        pid, uid = peer_uid(conn)
        if uid != self.allowed_uid:
            log.warning("refused a connection from uid %d (pid %d): only uid %d may call the agent",
                        uid, pid, self.allowed_uid)
            conn.close()
            return
        self._queue.put(conn)

    def stop(self) -> None:
        """Ask serve_forever to return (safe from a signal handler)."""
        self._stopping.set()

    def shutdown(self) -> None:
        """After serve_forever: stop taking calls without dropping any, finish what we hold, and remove
        our socket (unless a successor's is at the path now)."""
        self._stopping.set()
        try:
            if os.stat(self.path).st_ino == self._inode:  # never unlink a successor's socket
                self.path.unlink()  # first: no new connection can reach our accept queue after this
        except FileNotFoundError:
            pass
        self._drain_accept_queue()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            if worker.is_alive():
                worker.join()
        self.sock.close()

    def _drain_accept_queue(self) -> None:
        """Accept what connected before the path stopped pointing at us: those callers get served."""
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(True)
            self._admit(conn)

    def answer_handover(self) -> None:
        """Main thread, after shutdown and releasing the state: tell the successor it may serve."""
        if self.handover is None:
            return
        with contextlib.suppress(OSError):
            self.handover.sendall(HANDED_OVER)
        self.handover.close()
        self.handover = None

    def _work(self) -> None:
        while (conn := self._queue.get()) is not None:
            keep = False
            try:
                keep = self._handle(conn)
            except Exception:
                log.exception("worker failed on a connection")
            finally:
                if not keep:
                    conn.close()

    def _read(self, conn: socket.socket) -> bytes | None:
        """The whole request, or None when the client vanished or ran out of time. A request over
        MAX_REQUEST is drained (so the client gets to read our answer) and returned as TOO_LARGE."""
        deadline = time.monotonic() + self.read_deadline
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("client sent no complete request within %.0f s", self.read_deadline)
                return None
            conn.settimeout(left)
            try:
                chunk = conn.recv(65536)
            except OSError:
                return None
            if not chunk:
                return b"".join(chunks) if size <= MAX_REQUEST else TOO_LARGE
            size += len(chunk)
            if size <= MAX_REQUEST:
                chunks.append(chunk)
            else:
                chunks.clear()

    def _handle(self, conn: socket.socket) -> bool:
        """Serve one connection; True when the connection is kept open (a successor's handover)."""
        data = self._read(conn)
        if data is None:
            return False
        if data == HANDOVER:
            log.info("a new agent took over the socket: finishing the calls in hand, then handing over")
            self.handover = conn
            self._stopping.set()
            return True
        if data is TOO_LARGE:
            reply = _error_reply(INVALID_ENVIRONMENT, "request too large",
                                 f"the agent accepts requests (environment + network config) of at most "
                                 f"{MAX_REQUEST >> 20} MiB")
        else:
            try:
                reply = encode_reply(*self.serve(decode_request(data)))
            except WireError as exc:
                log.warning("malformed request from shim: %s", exc)
                reply = _error_reply(DECODE_FAILURE, f"malformed request: {exc}",
                                     "the shim and the agent disagree on the wire format; reinstall the shim")
        conn.settimeout(self.read_deadline)
        try:
            conn.sendall(reply)
        except OSError:
            # The shim went away mid-request. The work is done and recorded; the runtime will
            # retry or DEL, and both converge because every step is idempotent.
            log.warning("client left before the reply")
        return False
