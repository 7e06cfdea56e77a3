"""The two shims (cni/shim.py, cni/native/shim.c) against fake agents: same bytes, same exit code.

The fake agents are plain unix-socket servers in this process; no root and no namespaces needed.
The native shim is compiled from the current source into a temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import posix
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cni import shim
from cni.install import install
from cni.spec.versions import SUPPORTED

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("native", "python")
PLUGIN = "railnet-macvlan"
DEFAULT = "/run/railnet/agent.sock"


@dataclass
class Shims:
    dirs: dict[str, Path]
    tmp: Path


@pytest.fixture(scope="module")
def shims() -> Iterator[Shims]:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler: the native shim cannot be built")
    tmp = Path(tempfile.mkdtemp(prefix="rnt-shim-"))
    try:
        (tmp / "native").mkdir()
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp / "native" / PLUGIN),
                        str(ROOT / "cni" / "native" / "shim.c")], check=True)
        for path in install(tmp / "python", "python"):
            if path.name != PLUGIN:
                path.unlink()
        yield Shims({k: tmp / k for k in KINDS}, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shim_env(command: str, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net1",
            "CNI_NETNS": "/proc/self/ns/net", "CNI_ARGS": "K8S_POD_NAME=a", "CNI_PATH": "/opt/cni/bin", **extra}


@dataclass
class Run:
    code: int
    out: bytes
    err: bytes
    seconds: float

    def json(self) -> dict[str, object]:
        parsed = json.loads(self.out)
        assert isinstance(parsed, dict)
        return parsed


def both(shims: Shims, config: bytes | str, env: dict[str, str], timeout: float = 30) -> Run:
    """Run both shims at once (a slow fake agent delays them together); assert identical results."""
    data = config.encode() if isinstance(config, str) else config
    runs: dict[str, Run] = {}

    def one(kind: str) -> None:
        started = time.monotonic()
        proc = subprocess.run([str(shims.dirs[kind] / PLUGIN)], input=data, env=env, capture_output=True,
                              timeout=timeout, check=False)
        runs[kind] = Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)

    threads = [threading.Thread(target=one, args=(kind,)) for kind in KINDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    native, python = runs["native"], runs["python"]
    assert (native.code, native.out, native.err) == (python.code, python.out, python.err)
    return Run(native.code, native.out, native.err, max(native.seconds, python.seconds))


class FakeAgent:
    """A unix-socket server: `handle(conn)` runs per connection in its own thread."""

    def __init__(self, tmp: Path, handle: Callable[[socket.socket], None] | None, backlog: int = 64) -> None:
        self.path = str(tmp / f"agent-{id(self)}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(backlog)
        self.conns: list[socket.socket] = []
        self.handle = handle
        self.closed = False
        if handle is not None:
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        assert self.handle is not None
        with contextlib.suppress(OSError):
            self.handle(conn)

    def close(self) -> None:
        self.closed = True
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.conns:
            conn.close()
        os.unlink(self.path)


@pytest.fixture
def agents(shims: Shims) -> Iterator[Callable[..., FakeAgent]]:
    made: list[FakeAgent] = []

    def make(handle: Callable[[socket.socket], None] | None, backlog: int = 64) -> FakeAgent:
        made.append(FakeAgent(shims.tmp, handle, backlog))
        return made[-1]

    yield make
    for agent in made:
        agent.close()


def read_request(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def replying(reply: bytes, delay: float = 0.0) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        time.sleep(delay)
        conn.sendall(reply)
        conn.close()
    return handle


def error(run: Run) -> tuple[int, str, str]:
    doc = run.json()
    assert run.code == 1 and set(doc) == {"cniVersion", "code", "msg", "details"}, run
    return int(str(doc["code"])), str(doc["msg"]), str(doc["details"])


# ---- the top-level scanner --------------------------------------------------------------------

WANTED = (b"cniVersion", b"agentSocket")


@pytest.mark.parametrize(("config", "expected"), [
    (b'{"cniVersion": "1.0.0"}', {b"cniVersion": b"1.0.0"}),
    (b' \n{"a": {"cniVersion": "0.4.0", "agentSocket": "/run/railnet/x"}, "b": [{"agentSocket": "y"}]}', {}),
    (b'{"name": "x\\"}{[\\\\", "cniVersion": "0.3.1"}', {b"cniVersion": b"0.3.1"}),
    (b'{"n": "\\\\\\"", "agentSocket": "/run/railnet/a"}', {b"agentSocket": b"/run/railnet/a"}),
    (b'{"agent\\u0053ocket": "/run/railnet/\\u00e9\\ud83d\\ude00\\udc00"}',
     {b"agentSocket": "/run/railnet/\u00e9\U0001f600\ufffd".encode()}),
    (b'{"cniVersion": "1.0.0", "cniVersion": "0.4.0"}', {b"cniVersion": b"0.4.0"}),
    (b'{"cniVersion": "1.0.0", "cniVersion": 4}', {}),
    (b'{"x": ["}", "]"], "cniVersion": "1.1.0"}', {b"cniVersion": b"1.1.0"}),
    (b'{"name": "cniVersion", "v": "9"}', {}),
    (b'{"cniVersion": "1.0.0"', {}),  # never closes
    (b'[{"cniVersion": "1.0.0"}]', {}),  # not an object
    (b'{"cniVersion": "1.0\\q"}', {}),  # bad escape
    (b'{"cniVersion": "\\u00"}', {}),
    (b'{"cniVersion": "1.0.0"} trailing', {b"cniVersion": b"1.0.0"}),
    (b"", {}),
])
def test_scanner_reads_only_top_level_keys(config: bytes, expected: dict[bytes, bytes]) -> None:
    assert shim.top_level(config, WANTED) == expected


def test_scanner_agrees_with_json_on_a_large_prevresult() -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": f"x{i}\"}}", "agentSocket": "/tmp/no"} for i in range(3000)]}
    config = json.dumps({"cniVersion": "0.4.0", "prevResult": prev, "agentSocket": "/run/railnet/p.sock"}).encode()
    assert shim.top_level(config, WANTED) == {b"cniVersion": b"0.4.0", b"agentSocket": b"/run/railnet/p.sock"}


SOCKET_CASES = [
    ('{"cniVersion": "1.0.0", "ipam": {"agentSocket": "/run/railnet/nested.sock"}}', DEFAULT),
    ('{"cniVersion": "1.0.0", "agentSocket": "/tmp/outside.sock"}', DEFAULT),
    ('{"cniVersion": "1.0.0", "agentSocket": "/run/railnet/../tmp/x"}', DEFAULT),
    ('{"cniVersion": "1.0.0", "agentSocket": "/run/railnet/a/.."}', DEFAULT),
    ('{"cniVersion": "1.0.0", "agentSocket": "/run/railnet/"}', DEFAULT),
    ('{"cniVersion": "1.0.0", "agentSocket": "/run/railnetx/a.sock"}', DEFAULT),
    ('{"cniVersion": "1.0.0", "agentSocket": "/run/railnet/a\\u0000b"}', DEFAULT),
    ('{"cniVersion": "1.0.0", "agentSocket": ["/run/railnet/list.sock"]}', DEFAULT),
    ('{"cniVersion": "1.0.0", "agentSocket": "/run/railnet/rnt-none.sock"}', "/run/railnet/rnt-none.sock"),
    ('{"cniVersion": "1.0.0", "agentSocket": "/run/railnet/..rnt.sock"}', "/run/railnet/..rnt.sock"),
    ('{"name": "a\\"}{[", "agent\\u0053ocket": "/run/railnet/rnt-esc.sock", "x": {"agentSocket": "/tmp/n"}}',
     "/run/railnet/rnt-esc.sock"),
]


@pytest.mark.parametrize(("config", "expected"), SOCKET_CASES)
def test_agent_socket_from_config_only_top_level_under_run_railnet(shims: Shims, config: str, expected: str) -> None:
    if expected == DEFAULT and os.path.exists(DEFAULT):
        pytest.skip(f"a real agent listens on {DEFAULT}")
    run = both(shims, config, shim_env("ADD", RAILNET_AGENT_SOCKET=""))
    code, msg, details = error(run)
    assert (code, msg) == (11, f"railnet agent is not reachable at {expected}")
    assert details.startswith("No such file or directory;")


def test_environment_socket_wins_over_the_config(shims: Shims) -> None:
    config = '{"cniVersion": "1.0.0", "agentSocket": "/run/railnet/rnt-cfg.sock"}'
    run = both(shims, config, shim_env("DEL", RAILNET_AGENT_SOCKET="/run/rnt-env/agent.sock"))
    assert error(run)[1] == "railnet agent is not reachable at /run/rnt-env/agent.sock"


# ---- versions ----------------------------------------------------------------------------------

def test_both_shims_support_exactly_cni_spec_versions(shims: Shims) -> None:
    assert shim.SUPPORTED == SUPPORTED
    env = shim_env("VERSION", RAILNET_AGENT_SOCKET=str(shims.tmp / "none.sock"))
    run = both(shims, '{"cniVersion": "0.4.0"}', env)
    assert run.code == 0 and run.json() == {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED)}
    run = both(shims, '{"cniVersion": "9.9.9"}', env)
    assert error(run) == (1, 'unsupported cniVersion "9.9.9"', "railnet supports " + ", ".join(SUPPORTED))


@pytest.mark.parametrize("config", [
    b'{"cniVersion": "1.0.0\\u0000"}',
    b'{"cniVersion": "\\u0031.0.0"}',
    b'{"cniVersion": "' + b"9" * 300 + b'"}',
    b'{"cniVersion": "\xff\\"\\n"}',
    b'{"nested": {"cniVersion": "0.4.0"}}',
    b"not json",
])
def test_odd_cni_versions_match(shims: Shims, config: bytes) -> None:
    for command in ("VERSION", "ADD"):
        run = both(shims, config, shim_env(command, RAILNET_AGENT_SOCKET=str(shims.tmp / "none.sock")))
        assert run.out and not run.err


# ---- fake agents -------------------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "code", "body"), [
    (b'0\n{"cniVersion":"1.0.0"}', 0, b'{"cniVersion":"1.0.0"}'),
    (b"7\nxyz", 7, b"xyz"),
    (b"007\n", 7, b""),
    (b"255\n\xff\x00", 255, b"\xff\x00"),
])
def test_good_replies_are_passed_through(shims: Shims, agents: Callable[..., FakeAgent], reply: bytes,
                                         code: int, body: bytes) -> None:
    agent = agents(replying(reply))
    run = both(shims, '{"cniVersion": "1.0.0"}', shim_env("ADD", RAILNET_AGENT_SOCKET=agent.path))
    assert (run.code, run.out, run.err) == (code, body, b"")


@pytest.mark.parametrize("reply", [
    b"garbage\n{}", b"", b"0", b"-1\n{}", b" 0\n{}", b"0 \n{}", b"+1\n", b"256\n{}", b"1000\n", b"0x1\n", b"\n{}",
])
def test_bad_reply_header_is_error_11_malformed_reply(shims: Shims, agents: Callable[..., FakeAgent],
                                                      reply: bytes) -> None:
    agent = agents(replying(reply))
    run = both(shims, '{"cniVersion": "0.4.0"}', shim_env("ADD", RAILNET_AGENT_SOCKET=agent.path))
    assert error(run) == (11, f"malformed reply from the railnet agent at {agent.path}",
                          "the reply does not start with an exit code line (0-255)")
    assert run.json()["cniVersion"] == "0.4.0"


def test_the_agent_gets_the_request_on_the_wire(shims: Shims, agents: Callable[..., FakeAgent]) -> None:
    seen: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        seen.append(read_request(conn))
        conn.sendall(b"0\n")
        conn.close()

    agent = agents(handle)
    config = b'{"cniVersion": "1.0.0", "big": "' + b"x" * 300_000 + b'"}'
    both(shims, config, shim_env("ADD", RAILNET_AGENT_SOCKET=agent.path, CNI_ARGS="A=\xe9"))
    env = b"".join(f"{k}={v}".encode() + b"\0" for k, v in shim_env("ADD", CNI_ARGS="A=\xe9").items()
                   if k.startswith("CNI_"))
    assert seen == [b"RAILNET1 " + PLUGIN.encode() + b"\n" + env + b"\0" + config] * 2


def test_timeout_is_fractional_seconds_and_bad_values_fall_back(shims: Shims,
                                                                agents: Callable[..., FakeAgent]) -> None:
    agent = agents(replying(b"0\n{}", delay=1.0))
    config = '{"cniVersion": "1.0.0"}'
    started = time.monotonic()
    results = {}
    threads = [threading.Thread(target=lambda v=value: results.__setitem__(v, both(shims, config, shim_env(
        "ADD", RAILNET_AGENT_SOCKET=agent.path, RAILNET_AGENT_TIMEOUT=v))))
        for value in ("0.5", "", "abc", "0", "-1", "1e3", "1.2.3", ".", "99999999")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert error(results.pop("0.5"))[2] == "Connection timed out; is the railnet-agent DaemonSet running on this node?"
    for value, run in results.items():
        assert (run.code, run.out) == (0, b"{}"), value  # the default (120 s) applied
    assert time.monotonic() - started < 10


def test_timeout_parsing() -> None:
    environ: dict[bytes, bytes] = posix.environ
    saved = environ.pop(b"RAILNET_AGENT_TIMEOUT", None)
    try:
        for raw, seconds in ((b"0.5", 0.5), (b"2", 2.0), (b".25", 0.25), (b"3.", 3.0), (b"", 120.0),
                             (b"0", 120.0), (b"0.0", 120.0), (b"-1", 120.0), (b"1e1", 120.0), (b"nan", 120.0),
                             (b"inf", 120.0), (b" 1", 120.0), (b"1_0", 120.0), (b"1.2.3", 120.0),
                             (b"9" * 400, 120.0)):
            environ[b"RAILNET_AGENT_TIMEOUT"] = raw
            assert shim.timeout() == seconds, raw
    finally:
        environ.pop(b"RAILNET_AGENT_TIMEOUT", None)
        if saved is not None:
            environ[b"RAILNET_AGENT_TIMEOUT"] = saved


def test_an_agent_that_never_replies_times_out(shims: Shims, agents: Callable[..., FakeAgent]) -> None:
    agent = agents(read_request)  # reads the request, then holds the connection open
    run = both(shims, '{"cniVersion": "1.0.0"}', shim_env("ADD", RAILNET_AGENT_SOCKET=agent.path,
                                                         RAILNET_AGENT_TIMEOUT="0.5"))
    assert error(run)[2].startswith("Connection timed out;")
    assert 0.45 < run.seconds < 3


@pytest.mark.parametrize(("timeout", "low", "high", "reason"), [
    ("0.5", 0.45, 1.5, "Resource temporarily unavailable"),  # the deadline ends the retries
    ("5", 1.5, 4.0, "Resource temporarily unavailable"),  # the bounded retries end before the deadline
])
def test_a_full_accept_queue_fails_within_the_timeout(shims: Shims, agents: Callable[..., FakeAgent],
                                                      timeout: str, low: float, high: float, reason: str) -> None:
    agent = agents(None, backlog=0)  # never accepts
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    filler.setblocking(False)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        filler.connect(agent.path)
        with pytest.raises(BlockingIOError):
            probe.connect(agent.path)  # the queue is full: a blocking connect would wait
        run = both(shims, '{"cniVersion": "1.0.0"}', shim_env("ADD", RAILNET_AGENT_SOCKET=agent.path,
                                                             RAILNET_AGENT_TIMEOUT=timeout))
    finally:
        filler.close()
        probe.close()
    assert error(run) == (11, f"railnet agent is not reachable at {agent.path}",
                          f"{reason}; is the railnet-agent DaemonSet running on this node?")
    assert low < run.seconds < high


@pytest.mark.parametrize("length", [108, 300])
def test_a_socket_path_longer_than_sun_path_is_named(shims: Shims, length: int) -> None:
    path = "/run/rnt-long/" + "x" * (length - len("/run/rnt-long/"))
    run = both(shims, '{"cniVersion": "1.0.0"}', shim_env("ADD", RAILNET_AGENT_SOCKET=path))
    assert error(run) == (11, f"railnet agent is not reachable at {path}",
                          "the socket path is longer than 107 bytes")
    version = both(shims, '{"cniVersion": "1.0.0"}', shim_env("VERSION", RAILNET_AGENT_SOCKET=path))
    assert version.code == 0 and version.json()["supportedVersions"] == list(SUPPORTED)


def test_a_107_byte_path_is_tried(shims: Shims) -> None:
    path = "/run/rnt-long/" + "x" * (107 - len("/run/rnt-long/"))
    run = both(shims, '{"cniVersion": "1.0.0"}', shim_env("ADD", RAILNET_AGENT_SOCKET=path))
    assert error(run)[2].startswith("No such file or directory;")


def test_the_python_shim_imports_only_socket_beyond_start_up() -> None:
    """Its docstring's promise: under `python -I -S`, `_socket` is the one module it adds."""
    code = ("import sys; before = set(sys.modules); src = open(sys.argv[1]).read(); "
            "exec(compile(src, sys.argv[1], 'exec'), {'__name__': 'railnet_shim'}); "
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT / "cni" / "shim.py")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['_socket']"
