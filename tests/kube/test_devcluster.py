"""`railnet dev-cluster` itself: the CLI life cycle, start-up time, and that nothing is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

from railnet.dev import devcluster
from railnet.dev.devcluster import DevCluster, _alive, _start_time
from tests.kube.kubeutil import REPO, wait_for

CLI = [sys.executable, "-m", "railnet.dev.devcluster"]


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, devcluster.ENV_HOME: str(home)}
    return subprocess.run([*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _our_listeners(ports: Iterable[int], groups: Iterable[int]) -> list[str]:
    """Listening sockets on `ports` held by a process of one of the process groups (ours were leaders).

    Another program on the machine may legitimately reuse a freed ephemeral port, so a port being
    open is not by itself a leak; a listener in one of our process groups is.
    """
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    groups, wanted = set(groups), {str(p) for p in ports}
    leaks = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[3].rsplit(":", 1)[-1] not in wanted:
            continue
        for pid in re.findall(r"pid=(\d+)", fields[5]):
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(int(pid)) in groups:
                    leaks.append(line)
    return leaks


def _sleeper() -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    return proc, {"pid": proc.pid, "start": _start_time(proc.pid), "argv": ["sleep"]}


def test_cli_up_status_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # A stale cluster of the same name (a live process recorded in its state): `up` must reap it.
    stale_dir = home / "cli"
    stale_dir.mkdir(parents=True)
    stale, record = _sleeper()
    (stale_dir / "state.json").write_text(json.dumps({"processes": {"etcd": record}}))
    try:
        up = _cli("up", "--name", "cli", "--nodes", "2", "--label", "railnet.io/rack=r{i}",
                  "--capacity", "nvidia.com/gpu=4", home=home)
        assert up.returncode == 0, up.stderr + up.stdout
        assert stale.wait(timeout=5) is not None, "up did not stop the stale cluster's process"
        kubeconfig = Path(up.stdout.strip().splitlines()[-1])
        assert kubeconfig == stale_dir / "kubeconfig" and kubeconfig.exists()

        status = _cli("status", "--name", "cli", home=home)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "nodes 2 (2 Ready)" in status.stdout
        cluster = DevCluster("cli", state_dir=stale_dir)
        nodes = cluster.api().get("/api/v1/nodes")["items"]
        assert sorted(n["metadata"]["labels"]["railnet.io/rack"] for n in nodes) == ["r0", "r1"]
        assert {n["status"]["allocatable"]["nvidia.com/gpu"] for n in nodes} == {"4"}
        assert {n["status"]["allocatable"]["rdma/roce"] for n in nodes} == {"8"}
        state = cluster.state()
        # `up` returned, yet the cluster runs: the processes are daemonised.
        assert all(cluster.running().values()) and len(cluster.running()) == 5
    finally:
        state = DevCluster("cli", state_dir=stale_dir).state()
        down = _cli("down", "--name", "cli", home=home)
        stale.kill()
        stale.wait()
    assert down.returncode == 0, down.stderr
    assert not stale_dir.exists()
    for proc in state["processes"].values():
        assert not _alive(proc["pid"], proc["start"])
    assert not _our_listeners(state["ports"].values(), (p["pid"] for p in state["processes"].values()))
    assert _cli("status", "--name", "cli", home=home).returncode == 1


def test_down_never_signals_a_reused_pid(tmp_path: Path) -> None:
    proc, record = _sleeper()
    try:
        record["start"] = int(record["start"]) + 1  # same pid, another process's start time
        (tmp_path / "state.json").write_text(json.dumps({"processes": {"etcd": record}}))
        DevCluster("x", state_dir=tmp_path).down(log=lambda _: None)
        assert proc.poll() is None, "down killed a process it did not start"
        assert not tmp_path.exists()
    finally:
        proc.kill()
        proc.wait()


def test_cluster_of_a_killed_test_run_dies_and_is_reaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    script = textwrap.dedent("""
        import time
        from railnet.dev.devcluster import DevCluster, NodeSet
        DevCluster("victim", owner=True).up(NodeSet(count=1), log=lambda _: None)
        print("UP", flush=True)
        time.sleep(600)
    """)
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, devcluster.ENV_HOME: str(home)})
    try:
        assert runner.stdout is not None and runner.stdout.readline().strip() == "UP"
        state = json.loads((home / "victim" / "state.json").read_text())
        assert state["owner"]["pid"] == runner.pid
        runner.send_signal(signal.SIGKILL)  # a test run that crashed hard: no finalizers run
        runner.wait()
        procs = state["processes"].values()
        wait_for(lambda: not any(_alive(p["pid"], p["start"]) for p in procs), 10,
                 "PR_SET_PDEATHSIG to kill the cluster of the dead run")
        assert not _our_listeners(state["ports"].values(), (p["pid"] for p in procs))
        assert (home / "victim").exists()  # nobody has cleaned the disk yet...
        monkeypatch.setenv(devcluster.ENV_HOME, str(home))
        assert devcluster.reap_orphans(log=lambda _: None) == [home / "victim"]  # ...the next `up` does
        assert not (home / "victim").exists()
    finally:
        runner.kill()
        runner.wait()
        DevCluster("victim", state_dir=home / "victim").down(log=lambda _: None)
