"""The CNI path runs as root: each boundary a config author or a local process could try to cross."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cni.spec import errors
from cni.spec.wire import ShimRequest, decode_reply, encode_request
from railnet.dev.lab import AgentProcess, Lab, ip, links_in
from tests.netns.helpers import Env, macvlan_conf

REPO = Path(__file__).resolve().parents[2]


def ask(sock_path: Path, data: bytes, timeout: float = 20.0) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def as_nobody(path: Path, request: bytes) -> bytes | None:
    """Connect as uid 65534 from a forked child and send `request`: the bytes it got back (b"" when
    the agent hung up), or None if it could not even connect."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, talk, report through the pipe, exit without cleanup
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                os.write(write_end, b"+")
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                os.write(write_end, sock.recv(65536))
        except OSError:
            pass
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    data = os.read(read_end, 65536)
    os.close(read_end)
    return data[1:] if data.startswith(b"+") else None


@pytest.mark.parametrize("plugin_type", ["ABSOLUTE", "../../../../../../ABSOLUTE", "sub/dir", ".hidden", ".."])
def test_delegate_type_must_be_a_bare_name(env: Env, plugin_type: str) -> None:
    """An IPAM 'type' that is a path is refused with 7 and nothing is executed, even when the path
    names an executable that exists."""
    marker = env.lab.tmp / "executed"
    evil = env.lab.tmp / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\necho '{{}}'\n")
    evil.chmod(0o755)
    # A path that resolves to the script from the agent's cwd, from CNI_PATH entries, or absolutely.
    kind = plugin_type.replace("ABSOLUTE", str(evil).lstrip("/") if plugin_type.startswith("..") else str(evil))
    sub = env.bin_dir / "sub"
    sub.mkdir(exist_ok=True)
    (sub / "dir").symlink_to(evil) if not (sub / "dir").exists() else None
    (env.bin_dir / ".hidden").symlink_to(evil) if not (env.bin_dir / ".hidden").exists() else None
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic, ipam={"type": kind})
    for command in ("ADD", "DEL", "CHECK"):
        call = env.call("railnet-macvlan", command, conf, cid="c1", ifname="net1", netns=pod)
        if command == "ADD":
            assert call.output is not None and call.output["code"] == errors.INVALID_CONFIG, call.output
            assert "plugin type" in call.output["msg"]
    assert not marker.exists(), f"{kind!r} was executed"
    env.assert_clean(pod)


def test_agent_refuses_callers_that_are_not_root(env: Env) -> None:
    """SO_PEERCRED: even with the socket opened up by mistake, a non-root caller gets no answer."""
    env.agent.socket.chmod(0o666)
    env.agent.socket.parent.chmod(0o755)
    env.lab.tmp.chmod(0o755)
    env.agent.root.chmod(0o755)
    request = encode_request(ShimRequest("railnet-macvlan", {"CNI_COMMAND": "VERSION"}, '{"cniVersion":"1.0.0"}'))
    answer = as_nobody(env.agent.socket, request)
    assert answer is not None, "the file mode alone stopped the caller: the test proves nothing"
    assert answer == b"", "a non-root caller got an answer"
    log = env.agent.log_path.read_text()
    assert "refused a connection from uid 65534" in log
    code, body = decode_reply(ask(env.agent.socket, request))  # root still gets its answer
    assert code == 0 and json.loads(body)["cniVersion"] == "1.0.0"


def test_socket_dir_the_agent_did_not_create_keeps_its_mode(lab: Lab) -> None:
    shared = lab.tmp / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: world-writable and sticky
    agent = AgentProcess(lab.tmp / "a")
    agent.socket = shared / "agent.sock"
    lab.agents.append(agent)
    agent.start()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o600
    own = AgentProcess(lab.tmp / "b")  # a dir it creates itself is born 0700
    lab.agents.append(own)
    own.start()
    assert stat.S_IMODE(own.socket.parent.stat().st_mode) == 0o700


def start_second(agent: AgentProcess, socket_path: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netmanager.agent", "--socket", str(socket_path), "--state-dir",
                           str(state_dir), "--pools-dir", str(agent.pools_dir)], capture_output=True, text=True,
                          timeout=60, cwd=REPO, check=False)


def test_one_agent_per_state_dir_and_per_socket(env: Env) -> None:
    first = env.agent
    inode = first.socket.stat().st_ino
    same_state = start_second(first, env.lab.tmp / "other.sock", first.state_dir)
    assert same_state.returncode == 1 and f"holds {first.state_dir}" in same_state.stderr
    same_socket = start_second(first, first.socket, env.lab.tmp / "other-state")
    assert same_socket.returncode == 1 and "serving" in same_socket.stderr and str(first.socket) in same_socket.stderr
    # Neither took the first agent's socket away: it is the same file and still answers.
    assert first.socket.stat().st_ino == inode
    pod = env.lab.netns("pod")
    assert env.call("railnet-macvlan", "ADD", macvlan_conf(env.nic), cid="c1", ifname="net1", netns=pod).ok
    assert env.call("railnet-macvlan", "DEL", macvlan_conf(env.nic), cid="c1", ifname="net1", netns=pod).ok
    lock = first.state_dir / "agent.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600 and lock.read_text().strip() == str(first.proc.pid)  # type: ignore[union-attr]


def test_stopping_agent_leaves_a_successors_socket(env: Env) -> None:
    """On exit the agent unlinks only the socket inode it created (a rollout may have replaced it)."""
    successor = socket.socket(socket.AF_UNIX)
    env.agent.socket.unlink()
    successor.bind(str(env.agent.socket))
    successor.listen(1)
    try:
        env.agent.stop()
        assert env.agent.proc is not None and env.agent.proc.returncode == 0
        assert env.agent.socket.exists(), "the old agent removed its successor's socket"
    finally:
        successor.close()
        env.agent.socket.unlink(missing_ok=True)


def test_oversized_and_malformed_requests_get_an_answer(env: Env) -> None:
    too_big = encode_request(ShimRequest("railnet-macvlan", {"CNI_COMMAND": "ADD"}, " " * (4 << 20) + "{}"))
    code, body = decode_reply(ask(env.agent.socket, too_big))
    err = json.loads(body)
    assert code == 1 and err["code"] == errors.INVALID_ENVIRONMENT and "4 MiB" in err["details"]
    for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"RAILNET1 railnet-macvlan\nCNI_COMMAND=ADD"):
        code, body = decode_reply(ask(env.agent.socket, garbage))
        err = json.loads(body)
        assert code == 1 and err["code"] == errors.DECODE_FAILURE and "malformed request" in err["msg"]


def test_a_silent_client_holds_a_worker_only_until_the_deadline(lab: Lab) -> None:
    """With one worker, a client that connects and never finishes its request must not block the
    next caller for longer than the read deadline (10 s)."""
    agent = AgentProcess(lab.tmp / "one")
    agent.args = ["--workers", "1"]
    lab.agents.append(agent)
    agent.start()
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(str(agent.socket))
    silent.sendall(b"RAILNET1 rail")  # and nothing more
    request = encode_request(ShimRequest("railnet-macvlan", {"CNI_COMMAND": "VERSION"}, ""))
    code, _ = decode_reply(ask(agent.socket, request, timeout=30))  # served once the silent one times out
    assert code == 0
    silent.close()


def test_del_with_a_stale_netns_file_releases_everything(env: Env) -> None:
    """A netns file whose namespace is gone (an unmounted bind mount: setns gives EINVAL) counts as
    'gone' for DEL: the IP and the record are released instead of failing forever."""
    pod = env.lab.netns("stale")
    conf = macvlan_conf(env.nic)
    assert env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod).ok
    subprocess.run(["umount", pod], check=True)
    env.lab.namespaces.remove(Path(pod).name)
    try:
        assert Path(pod).exists()  # the file is left, the namespace behind it is not
        call = env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod)
        assert call.ok, call.output
        assert env.allocations() == 0 and env.records() == 0
    finally:
        os.unlink(pod)


def test_interface_name_with_a_dot(env: Env) -> None:
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic)
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1.100", netns=pod)
    assert add.ok, add.output
    assert "net1.100" in links_in(pod)
    rules = ip("-n", Path(pod).name, "-4", "rule")
    assert add.output is not None and add.output["ips"][0]["address"].split("/")[0] in rules
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1.100", netns=pod).ok
    env.assert_clean(pod)
