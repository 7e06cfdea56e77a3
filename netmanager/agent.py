"""railnet-agent: the warm node agent behind the CNI shim.

Requests for different containers run concurrently (one thread each); requests for the same
container are serialised, as the CNI spec expects plugins to be. All state lives in one SQLite
file, so a restarted agent picks up where the previous one stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socketserver
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cni.attachments import AttachmentStore
from cni.dispatch import Dispatcher
from cni.spec.wire import ShimRequest, WireError, decode_request, encode_reply
from ipam.plugin import IpamService
from ipam.pools import PoolRegistry
from ipam.sqlite import Database
from ipam.store import IpamStore

log = logging.getLogger("railnet.agent")
MAX_REQUEST = 4 << 20  # a network config with a large prevResult still fits


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class KeyedLocks:
    """One lock per container id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._users: dict[str, int] = defaultdict(int)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
            self._users[key] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                self._users[key] -= 1
                if not self._users[key]:
                    del self._users[key], self._locks[key]


class Agent:
    def __init__(self, state_dir: Path, pools_dir: Path | None, sysfs: Path) -> None:
        db = Database(state_dir / "railnet.db")
        self.ipam_store = IpamStore(db)
        self.attachments = AttachmentStore(db)
        self.dispatcher = Dispatcher(IpamService(self.ipam_store, PoolRegistry(pools_dir)), self.attachments, sysfs)
        self.locks = KeyedLocks()

    def serve_one(self, request: ShimRequest) -> tuple[int, str]:
        env, plugin = request.env, request.plugin
        started = time.perf_counter()
        with self.locks.hold(env.get("CNI_CONTAINERID", "")):
            code, stdout = self.dispatcher.handle(plugin, env, request.stdin)
        fields = {"plugin": plugin, "cmd": env.get("CNI_COMMAND"), "cid": env.get("CNI_CONTAINERID"),
                  "ifname": env.get("CNI_IFNAME"), "ms": round((time.perf_counter() - started) * 1e3, 2),
                  "exit": code}
        if code:
            fields["error"] = json.loads(stdout).get("msg") if stdout else ""
        log.info("cni request", extra={"fields": fields})
        return code, stdout


class _Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        self.request.settimeout(30)
        try:
            data = b""
            while chunk := self.request.recv(65536):
                data += chunk
                if len(data) > MAX_REQUEST:
                    raise WireError("request too large")
            request = decode_request(data)
        except (OSError, WireError) as exc:
            log.warning("bad request from shim: %s", exc)
            return
        code, stdout = self.server.agent.serve_one(request)
        try:
            self.request.sendall(encode_reply(code, stdout))
        except OSError:
            # The shim went away mid-request. The work is done and recorded; the runtime will
            # retry or DEL, and both converge because every step is idempotent.
            log.warning("client left before the reply",
                        extra={"fields": {"cid": request.env.get("CNI_CONTAINERID")}})


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = False
    block_on_close = True  # shutdown waits for requests in flight
    request_queue_size = 1024  # a node starting many pods at once bursts CNI calls (default is 5)

    def __init__(self, path: Path, agent: Agent) -> None:
        self.agent = agent
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        if path.exists():
            path.unlink()  # a stale socket from a previous run
        old = os.umask(0o177)  # the socket is born root-only: no window with wider permissions
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)


def run(socket_path: Path, state_dir: Path, pools_dir: Path | None, sysfs: Path) -> AgentServer:
    return AgentServer(socket_path, Agent(state_dir, pools_dir, sysfs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet agent", description="railnet node agent")
    parser.add_argument("--socket", type=Path, default=Path(os.environ.get("RAILNET_AGENT_SOCKET",
                                                                               "/run/railnet/agent.sock")))
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("RAILNET_STATE_DIR",
                                                                                  "/var/lib/railnet")))
    parser.add_argument("--pools-dir", type=Path, default=Path(os.environ.get("RAILNET_POOLS_DIR",
                                                                                  "/etc/railnet/pools")))
    parser.add_argument("--sysfs", type=Path, default=Path(os.environ.get("RAILNET_SYSFS_ROOT", "/sys")))
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])

    server = run(args.socket, args.state_dir, args.pools_dir, args.sysfs)

    def stop(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving", extra={"fields": {"socket": str(args.socket), "state": str(args.state_dir)}})
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # waits for in-flight requests (block_on_close)
        args.socket.unlink(missing_ok=True)
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
