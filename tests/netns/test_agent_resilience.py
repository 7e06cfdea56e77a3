"""The agent under crashes, concurrency and misbehaving clients."""

from __future__ import annotations

import json
import socket
import sqlite3
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cni.spec.wire import ShimRequest, encode_request
from railnet.dev.lab import links_in
from tests.netns.helpers import Env, macvlan_conf


def _kill_when_adding(env: Env, db: sqlite3.Connection, timeout: float = 5.0) -> bool:
    """SIGKILL the agent as soon as an ADD's intent record exists, i.e. inside the ADD."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.execute("SELECT 1 FROM attachment WHERE state='adding'").fetchone():
            env.agent.kill()
            return True
    env.agent.kill()
    return False


def test_sigkill_during_add_then_del_and_add_converge(env: Env) -> None:
    """Kill the agent inside ADDs (and around them); DEL and a new ADD must always converge, leaking nothing."""
    pod = env.lab.netns("pod")
    routes = [{"dst": f"10.{100 + i // 250}.{i % 250}.0/24"} for i in range(300)]  # a longer ADD
    conf = macvlan_conf(env.nic, ipam={"type": "railnet-ipam", "ranges": [[{"subnet": "10.90.0.0/24"}]],
                                       "routes": routes})
    interrupted = 0
    for step in range(16):
        db = sqlite3.connect(env.agent.db_path)  # opened first: the ADD takes only milliseconds
        shim = subprocess.Popen([str(env.bin_dir / "railnet-macvlan")], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                                                             "CNI_IFNAME": "net1", "CNI_NETNS": pod,
                                                             "CNI_PATH": str(env.bin_dir), **env.agent.env()})
        assert shim.stdin is not None and shim.stdout is not None
        shim.stdin.write(json.dumps(conf).encode())
        shim.stdin.close()
        if step % 2 == 0:
            assert _kill_when_adding(env, db), "no ADD seen in progress"
        else:
            time.sleep(step * 0.002)  # before, during or after the agent's work
            env.agent.kill()
        out = shim.stdout.read()
        shim.wait()
        db.close()
        with sqlite3.connect(env.agent.db_path) as db:
            states = [r[0] for r in db.execute("SELECT state FROM attachment")]
        if shim.returncode != 0:
            assert json.loads(out)["code"] == 11  # the runtime sees "try again later"
        interrupted += states == ["adding"]
        env.agent.start()
        assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
        env.assert_clean(pod)
        again = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
        assert again.ok, again.output
        assert env.allocations() == 1 and links_in(pod) == ["lo", "net1"]
        assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
        env.assert_clean(pod)
    assert interrupted >= 4, f"only {interrupted} kills landed inside an ADD"


def test_fifty_concurrent_adds_get_distinct_ips(env: Env) -> None:
    pods = [env.lab.netns(f"p{i}") for i in range(50)]
    conf = macvlan_conf(env.nic)

    def add(i: int) -> str:
        call = env.call("railnet-macvlan", "ADD", conf, cid=f"c{i}", ifname="net1", netns=pods[i])
        assert call.ok, call.output
        assert call.output is not None
        return str(call.output["ips"][0]["address"])

    with ThreadPoolExecutor(50) as pool:
        ips = list(pool.map(add, range(50)))
    assert len(set(ips)) == 50 and env.allocations() == 50

    def delete(i: int) -> bool:
        return env.call("railnet-macvlan", "DEL", conf, cid=f"c{i}", ifname="net1", netns=pods[i]).ok

    with ThreadPoolExecutor(50) as pool:
        assert all(pool.map(delete, range(50)))
    env.assert_clean(*pods)


def test_same_container_requests_are_serialised(env: Env) -> None:
    second = env.lab.nic("nic2")
    pod = env.lab.netns("pod")
    jobs = [(env.nic, "net1"), (second, "net2")]
    with ThreadPoolExecutor(2) as pool:
        calls = list(pool.map(lambda j: env.call("railnet-macvlan", "ADD", macvlan_conf(j[0]), cid="c1",
                                                 ifname=j[1], netns=pod), jobs))
    assert all(c.ok for c in calls), [c.output for c in calls]
    for nic, ifname in jobs:
        assert env.call("railnet-macvlan", "DEL", macvlan_conf(nic), cid="c1", ifname=ifname, netns=pod).ok
    env.assert_clean(pod)


def test_dropped_and_idle_clients_do_not_wedge_the_agent(env: Env) -> None:
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic)
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(env.agent.socket))  # connects and says nothing
    half = socket.socket(socket.AF_UNIX)
    half.connect(str(env.agent.socket))
    half.sendall(b"RAILNET1 railnet-macvlan\nCNI_COMMAND=AD")  # then vanishes mid-request
    half.close()
    # a client that sends a whole ADD and leaves before the answer: the ADD still completes
    gone = socket.socket(socket.AF_UNIX)
    gone.connect(str(env.agent.socket))
    request = ShimRequest("railnet-macvlan", {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net1",
                                              "CNI_NETNS": pod}, json.dumps(conf))
    gone.sendall(encode_request(request))
    gone.shutdown(socket.SHUT_WR)
    gone.close()
    other = env.lab.netns("other")
    ok = env.call("railnet-macvlan", "ADD", conf, cid="c2", ifname="net1", netns=other)
    assert ok.ok, ok.output
    deadline = time.monotonic() + 10
    while env.records() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert links_in(pod) == ["lo", "net1"]
    for cid, ns in (("c1", pod), ("c2", other)):
        assert env.call("railnet-macvlan", "DEL", conf, cid=cid, ifname="net1", netns=ns).ok
    idle.close()
    env.assert_clean(pod, other)


def test_restart_recovers_state_and_socket_is_root_only(env: Env) -> None:
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic)
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert add.ok
    mode = env.agent.socket.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600 and stat.S_IMODE(env.agent.socket.parent.stat().st_mode) == 0o700
    env.agent.stop()  # SIGTERM: clean shutdown removes the socket
    assert env.agent.proc is not None and env.agent.proc.returncode == 0
    assert not Path(env.agent.socket).exists()
    env.agent.start()
    assert env.call("railnet-macvlan", "CHECK", {**conf, "prevResult": add.output}, cid="c1", ifname="net1",
                    netns=pod).ok
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
    env.assert_clean(pod)
