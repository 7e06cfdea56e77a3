"""A throwaway network lab on this machine: namespaces, veth "NICs", a railnet agent, CNI calls.

Shared by `make demo`, the netns tests and the benchmarks. Everything a Lab creates is recorded
and removed by `close()`, in reverse order, even when the caller failed half-way.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/var/run/netns")
REFERENCE_CNI_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins


def ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class PluginCall:
    code: int
    output: dict[str, Any] | None
    seconds: float
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0


def run_plugin(binary: Path, command: str, config: dict[str, Any] | str, *, container_id: str = "",
               ifname: str = "", netns: str = "", cni_path: list[Path] | None = None,
               env: dict[str, str] | None = None, args: str = "") -> PluginCall:
    """Exec a CNI plugin the way a runtime does: CNI_* in the environment, config on stdin."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
                "CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname, "CNI_NETNS": netns,
                "CNI_ARGS": args, "CNI_PATH": ":".join(str(p) for p in (cni_path or [binary.parent]))}
    full_env.update(env or {})
    stdin = config if isinstance(config, str) else json.dumps(config)
    started = time.perf_counter()
    proc = subprocess.run([str(binary)], input=stdin.encode(), env=full_env, capture_output=True, check=False)
    seconds = time.perf_counter() - started
    out = proc.stdout.decode().strip()
    try:
        parsed = json.loads(out) if out else None
    except json.JSONDecodeError:
        parsed = {"unparsed": out}
    return PluginCall(proc.returncode, parsed, seconds, proc.stderr.decode())


class AgentProcess:
    """railnet-agent as a real process (so tests can SIGKILL it), with its own state dir."""

    def __init__(self, root: Path, pools_dir: Path | None = None, sysfs: Path | None = None) -> None:
        self.root = root
        self.socket = root / "run" / "agent.sock"
        self.state_dir = root / "state"
        self.pools_dir = pools_dir or root / "pools"
        self.sysfs = sysfs or Path("/sys")
        self.log_path = root / "agent.log"
        self.args: list[str] = []  # more agent flags, e.g. ["--workers", "1"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def db_path(self) -> Path:
        return self.state_dir / "railnet.db"

    def start(self, timeout: float = 20.0, env: dict[str, str] | None = None) -> None:
        """Start the agent; `env` adds variables (e.g. a fault-injection point, see cni.faults)."""
        self.socket.unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netmanager.agent", "--socket", str(self.socket), "--state-dir",
             str(self.state_dir), "--pools-dir", str(self.pools_dir), "--sysfs", str(self.sysfs), *self.args],
            stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[2], env={**os.environ, **(env or {})})
        log.close()
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"railnet agent did not start; log:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def env(self) -> dict[str, str]:
        return {"RAILNET_AGENT_SOCKET": str(self.socket)}


class Lab:
    """Namespaces and links named `<prefix>-...`, all removed on close()."""

    def __init__(self, prefix: str = "rnlab") -> None:
        self.prefix = f"{prefix}{secrets.token_hex(2)}"
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.agents: list[AgentProcess] = []

    def netns(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        ip("netns", "add", full)
        self.namespaces.append(full)
        ip("-n", full, "link", "set", "lo", "up")
        return str(NETNS_DIR / full)

    def nic(self, name: str, mtu: int = 9000) -> str:
        """A veth pair standing in for a RoCE NIC: one end here, the peer up so carrier is on."""
        host, peer = f"{self.prefix}{name}"[:15], f"{self.prefix}{name}p"[:15]
        ip("link", "add", host, "mtu", str(mtu), "type", "veth", "peer", "name", peer, "mtu", str(mtu))
        self.links.append(host)
        ip("link", "set", host, "up")
        ip("link", "set", peer, "up")
        return host

    def agent(self, pools: dict[str, Any] | None = None, sysfs: Path | None = None) -> AgentProcess:
        root = self.tmp / f"agent{len(self.agents)}"
        pools_dir = root / "pools"
        pools_dir.mkdir(parents=True)
        for name, spec in (pools or {}).items():
            (pools_dir / f"{name}.json").write_text(json.dumps(spec))
        agent = AgentProcess(root, pools_dir, sysfs)
        self.agents.append(agent)
        agent.start()
        return agent

    def install_shim(self, kind: str = "auto") -> Path:
        from cni.install import install
        bin_dir = self.tmp / f"bin-{kind}"
        install(bin_dir, kind)
        return bin_dir

    def close(self) -> list[str]:
        """Remove everything; return what could not be removed (empty when clean)."""
        problems: list[str] = []
        for agent in self.agents:
            agent.stop()
        for link in reversed(self.links):
            try:
                ip("link", "del", link)
            except RuntimeError as exc:
                if "Cannot find device" not in str(exc):
                    problems.append(str(exc))
        for ns in reversed(self.namespaces):
            try:
                ip("netns", "del", ns)
            except RuntimeError as exc:
                problems.append(str(exc))
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def links_in(netns_path: str) -> list[str]:
    """Interface names inside a namespace (lo included)."""
    out = ip("-n", Path(netns_path).name, "-o", "link", "show")
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
