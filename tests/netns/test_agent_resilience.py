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
from typing import Any

import pytest

from cni.spec.wire import ShimRequest, encode_request
from railnet.dev.lab import links_in
from tests.netns.helpers import Env, macvlan_conf

FAULT_POINTS = ("add:ip-allocated", "add:link-created", "add:configured")


def start_shim(env: Env, command: str, conf: dict[str, Any], netns: str, cid: str = "c1") -> subprocess.Popen[bytes]:
    """A runtime's exec of the shim, left running so the test can act while the agent works."""
    shim = subprocess.Popen([str(env.bin_dir / "railnet-macvlan")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "net1",
                                 "CNI_NETNS": netns, "CNI_PATH": str(env.bin_dir), **env.agent.env()})
    assert shim.stdin is not None
    shim.stdin.write(json.dumps(conf).encode())
    shim.stdin.close()
    return shim


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the agent never reached the fault point ({path})"
        time.sleep(0.01)


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_sigkill_inside_add_then_del_and_add_converge(env: Env, point: str) -> None:
    """The agent is stopped at a known step inside ADD (a fault point, not a race) and SIGKILLed
    there; after a restart DEL and a new ADD converge and nothing leaks."""
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic)
    marker = env.lab.tmp / f"fault-{point.replace(':', '-')}"
    env.agent.kill()
    env.agent.start(env={"RAILNET_FAULT_POINT": point, "RAILNET_FAULT_FILE": str(marker)})
    shim = start_shim(env, "ADD", conf, pod)
    wait_for(marker)
    with sqlite3.connect(env.agent.db_path) as db:  # the kill lands inside the ADD: intent recorded, not done
        assert [r[0] for r in db.execute("SELECT state FROM attachment")] == ["adding"], \
            env.agent.log_path.read_text()[-3000:]
    env.agent.kill()
    assert shim.stdout is not None
    out = shim.stdout.read()
    shim.wait(timeout=30)
    assert shim.returncode != 0 and json.loads(out)["code"] == 11  # the runtime sees "try again later"
    env.agent.start()
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
    env.assert_clean(pod)
    again = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert again.ok, again.output
    assert env.allocations() == 1 and links_in(pod) == ["lo", "net1"]
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
    env.assert_clean(pod)


def pause_agent_at(env: Env, point: str) -> Path:
    """Restart the agent so that the next request reaching `point` waits there (only its thread)
    until the returned file is deleted."""
    marker = env.lab.tmp / f"pause-{point.replace(':', '-')}"
    env.agent.stop()
    env.agent.start(env={"RAILNET_FAULT_POINT": point, "RAILNET_FAULT_FILE": str(marker),
                         "RAILNET_FAULT_MODE": "wait"})
    return marker


def attachment_state(env: Env, pod: str) -> tuple[int, int, bool]:
    return env.records(), env.allocations(), "net1" in links_in(pod)


def test_del_during_add_of_the_same_container_waits_for_it(env: Env) -> None:
    """Per-container serialisation: a DEL that arrives while the ADD is half done runs after it,
    so it removes the whole attachment. Without the lock it would release the IP and record of an
    ADD that then creates the link: a leaked interface."""
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic)
    marker = pause_agent_at(env, "add:ip-allocated")
    add = start_shim(env, "ADD", conf, pod)
    wait_for(marker)
    delete = start_shim(env, "DEL", conf, pod)
    time.sleep(0.3)  # give an unserialised DEL every chance to run first
    marker.unlink()
    assert add.wait(timeout=30) == 0 and delete.wait(timeout=30) == 0
    env.assert_clean(pod)


def test_gc_waits_for_adds_in_flight(env: Env) -> None:
    """GC runs alone. Sent while an ADD is half done (its record still 'adding'), it must not
    collect that attachment's IP and record from under it: afterwards the attachment is either
    wholly there or wholly gone (here: gone, since the GC's valid list is empty)."""
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic)
    marker = pause_agent_at(env, "add:link-created")
    add = start_shim(env, "ADD", conf, pod)
    wait_for(marker)
    gc = subprocess.Popen([str(env.bin_dir / "railnet-macvlan")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env={"CNI_COMMAND": "GC", "CNI_PATH": str(env.bin_dir), **env.agent.env()})
    assert gc.stdin is not None
    gc.stdin.write(json.dumps({**conf, "cni.dev/valid-attachments": []}).encode())
    gc.stdin.close()
    time.sleep(0.3)  # an unserialised GC would finish here, mid-ADD
    marker.unlink()
    assert add.wait(timeout=30) == 0
    assert gc.wait(timeout=30) == 0, gc.stdout.read() if gc.stdout else ""
    assert attachment_state(env, pod) == (0, 0, False)
    env.assert_clean(pod)


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
