"""`railnet install-cni` as the DaemonSet's init step: checks before it writes, writes atomically,
and `--uninstall` puts the node's CNI dirs back exactly as they were."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from cni import install
from cni.meta import netconf

CALICO = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "calico"}, {"type": "portmap"}]}


def snapshot(*dirs: Path) -> dict[str, bytes]:
    """Every file under the dirs with its bytes (and so whether it exists)."""
    return {str(p): p.read_bytes() for d in dirs if d.exists() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    bin_dir.mkdir()
    (conf_dir / "10-calico.conflist").write_text(json.dumps(CALICO))
    (bin_dir / "calico").write_bytes(b"\x7fELF calico")
    return conf_dir, bin_dir


def run(conf_dir: Path, bin_dir: Path, *extra: str) -> int:
    return install.main(["--dest", str(bin_dir), "--shim", "python", "--conf-dir", str(conf_dir), *extra])


def test_install_then_uninstall_leaves_the_dirs_byte_for_byte_as_before(node: tuple[Path, Path]) -> None:
    conf_dir, bin_dir = node
    before = snapshot(conf_dir, bin_dir)
    assert run(conf_dir, bin_dir, "--primary-conflist", "10-calico.conflist",
               "--agent-socket", "/run/railnet/agent.sock") == 0
    ours = json.loads((conf_dir / netconf.META_FILE).read_text())
    assert ours["plugins"] == [{"type": "railnet", "clusterNetwork": "k8s-pod-network", "confDir": str(conf_dir),
                                "agentSocket": "/run/railnet/agent.sock"}]
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted(["calico", *install.PLUGIN_NAMES])
    assert not [p for p in (*conf_dir.iterdir(), *bin_dir.iterdir()) if p.name.startswith(".")]  # no temp files
    assert run(conf_dir, bin_dir, "--uninstall") == 0
    assert snapshot(conf_dir, bin_dir) == before


@pytest.mark.parametrize(("name", "content", "says"), [
    ("05-missing.conflist", None, "does not exist (configs present: 10-calico.conflist)"),
    ("10-calico.conflist", "{not json", "is not valid JSON"),
    ("10-calico.conflist", json.dumps({"name": "x", "plugins": []}), "conflist without plugins"),
    ("10-calico.conflist", json.dumps({"plugins": [{"type": "calico"}]}), "has no network name"),
    ("10-calico.conf", json.dumps({"name": "x"}), "single-plugin config without a 'type'"),
    ("../net.d/10-calico.conflist", None, "must be a bare file name"),
    (netconf.META_FILE, None, "railnet's own file"),
])
def test_a_bad_primary_fails_with_what_to_fix_and_changes_nothing(
        node: tuple[Path, Path], name: str, content: str | None, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    conf_dir, bin_dir = node
    if content is not None:
        (conf_dir / name).write_text(content)
    before = snapshot(conf_dir, bin_dir)
    assert run(conf_dir, bin_dir, "--primary-conflist", name) == 1
    err = capsys.readouterr().err
    assert err.startswith("railnet install-cni: error: ") and says in err, err
    assert snapshot(conf_dir, bin_dir) == before  # not even the plugin files were written


def test_a_reinstall_over_a_bad_primary_keeps_the_working_config(node: tuple[Path, Path]) -> None:
    """The node already runs railnet; an upgrade with a wrong value must not break it."""
    conf_dir, bin_dir = node
    assert run(conf_dir, bin_dir, "--primary-conflist", "10-calico.conflist") == 0
    before = snapshot(conf_dir, bin_dir)
    assert run(conf_dir, bin_dir, "--primary-conflist", "99-typo.conflist") == 1
    assert snapshot(conf_dir, bin_dir) == before


def test_a_config_that_sorts_before_ours_is_refused(node: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    conf_dir, bin_dir = node
    (conf_dir / "00-aaa.conflist").write_text(json.dumps(CALICO))
    assert run(conf_dir, bin_dir) == 1
    assert "00-aaa.conflist sort before 00-railnet.conflist" in capsys.readouterr().err
    assert not (conf_dir / netconf.META_FILE).exists()


@pytest.mark.parametrize("socket", ["/tmp/agent.sock", "/run/railnet/../docker.sock", "run/railnet/a.sock"])
def test_the_agent_socket_must_be_where_the_shim_follows_it(node: tuple[Path, Path], socket: str) -> None:
    conf_dir, bin_dir = node
    before = snapshot(conf_dir, bin_dir)
    assert run(conf_dir, bin_dir, "--agent-socket", socket) == 1
    assert snapshot(conf_dir, bin_dir) == before


def test_uninstall_leaves_a_foreign_file_with_our_name(node: tuple[Path, Path]) -> None:
    conf_dir, bin_dir = node
    (conf_dir / netconf.META_FILE).write_text(json.dumps(CALICO))
    assert run(conf_dir, bin_dir, "--uninstall") == 0
    assert json.loads((conf_dir / netconf.META_FILE).read_text()) == CALICO


def test_a_missing_conf_dir_says_which_value_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path / "nope", tmp_path / "bin") == 1
    assert "cni.confDir" in capsys.readouterr().err and not (tmp_path / "bin").exists()


def test_reinstalling_while_the_runtime_execs_the_plugin_never_runs_a_partial_file(tmp_path: Path) -> None:
    """write + rename: a concurrent exec sees the old file or the new one, never ETXTBSY or a torn file."""
    bin_dir = tmp_path / "bin"
    install.install(bin_dir, "python")
    stop, failures = threading.Event(), []

    def execs() -> None:
        while not stop.is_set():
            try:
                proc = subprocess.run([str(bin_dir / "railnet-ipam")], input=b'{"cniVersion":"1.0.0"}',
                                      capture_output=True, env={"CNI_COMMAND": "VERSION"}, check=False)
            except OSError as exc:  # ETXTBSY: a file being written is exec'd (what write-in-place gives)
                failures.append(exc)
                continue
            if proc.returncode != 0 or not proc.stdout.startswith(b'{"cniVersion"'):
                failures.append(proc)  # a torn script

    runner = threading.Thread(target=execs)
    runner.start()
    try:
        for _ in range(100):
            install.install(bin_dir, "python")
    finally:
        stop.set()
        runner.join()
    assert not failures, failures[:3]
    assert all(os.access(bin_dir / n, os.X_OK) for n in install.PLUGIN_NAMES)
