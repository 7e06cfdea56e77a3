"""The agent in its DaemonSet container runs delegates chrooted into the host's root (RAILNET_HOST_ROOT),
and writes sysctls through the host's /proc/sys mounted elsewhere (RAILNET_PROC_SYS)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAVE_CC = shutil.which("cc") is not None

PROBE = """
import json, sys
from cni.spec.errors import CniError
from cni.spec.exec import exec_plugin
try:
    out = exec_plugin(sys.argv[1], "VERSION", {"cniVersion": "1.0.0"}, {"CNI_PATH": "/opt/cni/bin"})
    print(json.dumps({"ok": out}))
except CniError as exc:
    print(json.dumps({"error": exc.msg}))
"""


def run_probe(plugin: str, env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROBE, plugin], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, check=True, timeout=60)
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.skipif(not HAVE_CC or os.geteuid() != 0, reason="needs cc (a static plugin) and root (chroot)")
def test_delegates_run_inside_the_host_root(tmp_path: Path) -> None:
    host = tmp_path / "host"
    bin_dir = host / "opt" / "cni" / "bin"
    bin_dir.mkdir(parents=True)
    # a static plugin that answers VERSION by itself (the native shim does, before any socket)
    subprocess.run(["cc", "-static", "-O2", "-o", str(bin_dir / "hostplugin"), str(ROOT / "cni/native/shim.c")],
                   check=True, capture_output=True, timeout=120)
    result = run_probe("hostplugin", {"RAILNET_HOST_ROOT": str(host)})
    assert "supportedVersions" in result["ok"], result  # type: ignore[operator]
    # without the host root, the container's own /opt/cni/bin is searched, where it is not
    assert "not found" in str(run_probe("hostplugin", {"RAILNET_HOST_ROOT": ""}).get("error")), "leaked path"


def test_the_sysctl_root_follows_the_environment() -> None:
    code = "from cni.linux.netns import sysctl_path; print(sysctl_path('ipv4', 'conf', 'net1', 'arp_notify'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "RAILNET_PROC_SYS": "/host-proc-sys/"}).stdout.strip()
    assert out == "/host-proc-sys/net/ipv4/conf/net1/arp_notify"


def test_runtime_means_the_root_of_the_process_that_started_the_agent() -> None:
    code = "from cni.spec.hostroot import host_path; print(host_path('/run/netns/x'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "RAILNET_HOST_ROOT": "runtime"}).stdout.strip()
    assert out == f"/proc/{os.getpid()}/root/run/netns/x"
    assert Path(f"/proc/{os.getpid()}/root/proc/sys/net").is_dir()  # what sysctls are written through
