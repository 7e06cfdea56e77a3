"""The agent in a DaemonSet: readiness is a real CNI round trip, a rolling update hands the socket over
without failing a call, and the Prometheus series move with the calls.

Real agent processes on a real unix socket, called through the installed (native or Python) shim;
the calls are railnet-ipam ADD/DEL, which need no network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni import install
from cni.spec.wire import ShimRequest, decode_reply, encode_request
from netmanager import probe
from railnet.dev.lab import PluginCall, run_plugin

ROOT = Path(__file__).resolve().parents[2]
CONF = {"cniVersion": "1.0.0", "name": "rollover", "type": "railnet-ipam",
        "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "10.123.0.0/16"}]]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agents:
    """Agent processes sharing one socket path and state dir, as successive DaemonSet pods do."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "run" / "agent.sock"
        self.state = root / "state"
        self.bin = root / "bin"
        install.install(self.bin, "auto")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = open(self.root / f"agent{n}.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([sys.executable, "-m", "netmanager.agent", "--socket", str(self.socket),
                                 "--state-dir", str(self.state), "--pools-dir", str(self.root / "pools"),
                                 "--takeover", "--log-level", "debug", *extra],
                                stdout=log, stderr=log, cwd=ROOT)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, n: int) -> str:
        return (self.root / f"agent{n}.log").read_text()

    def wait_log(self, n: int, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(n):
            assert self.procs[n].poll() is None, f"agent {n} exited:\n{self.log(n)}"
            assert time.monotonic() < deadline, f"agent {n} never logged {text!r}:\n{self.log(n)}"
            time.sleep(0.02)

    def call(self, command: str, cid: str, conf: dict[str, object] | None = None) -> PluginCall:
        return run_plugin(self.bin / "railnet-ipam", command, conf or CONF, container_id=cid, ifname="net1",
                          netns="/proc/self/ns/net", env={"RAILNET_AGENT_SOCKET": str(self.socket)})

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    a = Agents(tmp_path)
    try:
        yield a
    finally:
        a.close()


def test_the_probe_passes_only_when_a_call_is_served(agents: Agents) -> None:
    assert probe.main(["--socket", str(agents.socket)]) == 1  # nothing there yet
    proc = agents.start()
    agents.wait_log(0, '"serving"')
    assert probe.main(["--socket", str(agents.socket)]) == 0
    proc.send_signal(signal.SIGSTOP)  # a wedged agent: the socket accepts, nobody answers
    try:
        with pytest.raises(probe.ProbeError, match="no reply within"):
            probe.round_trip(agents.socket, timeout=1.0)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert probe.round_trip(agents.socket) > 0
    proc.kill()
    proc.wait()
    with pytest.raises(probe.ProbeError, match="refused"):  # the socket file of a dead agent
        probe.round_trip(agents.socket)


def test_a_rolling_update_under_load_fails_no_call_and_keeps_the_state(agents: Agents) -> None:
    agents.start()
    agents.wait_log(0, '"serving"')
    results: list[tuple[str, PluginCall]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            cid = f"w{worker}-{i}"
            results.append((cid, agents.call("ADD", cid)))
            i += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        agents.start()  # the new DaemonSet pod's agent
        agents.wait_log(1, '"serving"')
        agents.wait_log(0, "handed over to the new agent")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [(cid, r) for cid, r in results if not r.ok]
    assert not failed, failed[:3]
    served_by = [len(re.findall(r'"cmd": "ADD"', agents.log(n))) for n in (0, 1)]
    assert all(served_by) and sum(served_by) == len(results), (served_by, len(results))
    assert agents.procs[0].poll() is None, "the old agent idles until its SIGTERM (no restart into a takeover)"
    # The new agent owns the state: it releases what the old one allocated.
    for cid, _ in results:
        assert agents.call("DEL", cid).ok
    import sqlite3

    with sqlite3.connect(agents.state / "railnet.db") as db:
        assert db.execute("SELECT COUNT(*) FROM ipam_allocation").fetchone()[0] == 0
    agents.procs[0].terminate()
    assert agents.procs[0].wait(timeout=15) == 0
    assert agents.socket.exists() and probe.main(["--socket", str(agents.socket)]) == 0  # B's socket stays
    agents.procs[1].terminate()
    assert agents.procs[1].wait(timeout=15) == 0
    assert not agents.socket.exists()


def test_a_call_in_flight_on_the_old_agent_finishes_before_the_new_one_serves(agents: Agents) -> None:
    ready = [agents.root / "a.ready", agents.root / "b.ready"]  # pod-local files in a DaemonSet

    def is_ready(n: int) -> bool:
        return probe.main(["--socket", str(agents.socket), "--ready-file", str(ready[n]), "--timeout", "2"]) == 0

    agents.start("--ready-file", str(ready[0]))
    agents.wait_log(0, '"serving"')
    assert is_ready(0)
    request = encode_request(ShimRequest("railnet-ipam", {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "slow", "CNI_IFNAME": "net1", "CNI_NETNS": "/proc/self/ns/net",
        "CNI_PATH": str(agents.bin)}, json.dumps(CONF)))
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(agents.socket))
    slow.sendall(request[:20])  # the old agent's worker holds this call
    agents.start("--ready-file", str(ready[1]))
    deadline = time.monotonic() + 20
    while agents.procs[1].poll() is None and "took over" not in agents.log(1):
        assert time.monotonic() < deadline, agents.log(1)
        time.sleep(0.02)
    with pytest.raises(probe.ProbeError, match="no reply"):  # queued on the new socket, not served yet
        probe.round_trip(agents.socket, timeout=1.0)
    assert "handed over" not in agents.log(0)
    assert not is_ready(1), "the new pod is ready only once its own agent serves"
    slow.sendall(request[20:])
    slow.shutdown(socket.SHUT_WR)
    slow.settimeout(15)
    reply = b""
    while chunk := slow.recv(65536):
        reply += chunk
    slow.close()
    code, body = decode_reply(reply)
    assert code == 0 and b'"10.123.' in body, body
    agents.wait_log(1, '"serving"')
    assert probe.main(["--socket", str(agents.socket)]) == 0
    assert is_ready(1) and not is_ready(0)  # the old pod's agent has handed over
    assert agents.call("DEL", "slow").ok


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_the_metrics_series_move_with_the_calls(agents: Agents) -> None:
    port = free_port()
    agents.start("--metrics-port", str(port), "--metrics-address", "127.0.0.1")
    agents.wait_log(0, '"serving"')
    ok = 'railnet_cni_requests_total{code="0",command="ADD",plugin="railnet-ipam"}'
    bad = 'railnet_cni_requests_total{code="7",command="ADD",plugin="railnet-ipam"}'
    hist = 'railnet_cni_request_duration_seconds_count{code="0",command="ADD",plugin="railnet-ipam"}'
    before = scrape(port)
    assert ok not in before and sum(v for k, v in before.items() if k.startswith("railnet_ipam_allocated")) == 0
    for i in range(3):
        assert agents.call("ADD", f"m{i}").ok
    bad_conf = {**CONF, "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "not-a-subnet"}]]}}
    assert agents.call("ADD", "bad", bad_conf).code != 0
    after = scrape(port)
    assert after[ok] == 3 and after[hist] == 3 and after[bad] == 1, {k: v for k, v in after.items() if "cni" in k}
    assert sum(v for k, v in after.items() if k.startswith("railnet_ipam_allocated_addresses")) == 3
    assert after["railnet_cni_requests_in_flight"] == 0
    for i in range(3):
        assert agents.call("DEL", f"m{i}").ok
    final = scrape(port)
    assert final['railnet_cni_requests_total{code="0",command="DEL",plugin="railnet-ipam"}'] == 3
    assert sum(v for k, v in final.items() if k.startswith("railnet_ipam_allocated_addresses")) == 0
    # a successor binds the same port while this agent still runs (SO_REUSEPORT, hostNetwork)
    agents.start("--metrics-port", str(port), "--metrics-address", "127.0.0.1")
    agents.wait_log(1, '"serving"')
    agents.wait_log(0, "handed over")
    with contextlib.suppress(OSError):
        assert "railnet_cni_requests_total" in urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert os.path.exists(agents.socket)
