"""`railnet install-cni` and the packaging of the native shim."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cni import install
from cni.dispatch import SERVED_PLUGINS

ROOT = Path(__file__).resolve().parents[2]
HAVE_CC = shutil.which(os.environ.get("CC") or "cc") is not None


def test_plugin_names_are_exactly_what_the_agent_serves() -> None:
    assert install.PLUGIN_NAMES == SERVED_PLUGINS


def test_install_writes_one_file_per_served_plugin(tmp_path: Path) -> None:
    written = install.install(tmp_path, "python")
    assert sorted(p.name for p in written) == sorted(SERVED_PLUGINS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SERVED_PLUGINS)
    assert all(os.access(p, os.X_OK) for p in written)


def test_install_cni_does_not_import_the_agent_side() -> None:
    code = "import sys, cni.install; print(sorted(m for m in sys.modules if m.startswith(('cni', 'ipam'))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['cni', 'cni.install']"


def version_answer(binary: Path) -> bytes:
    proc = subprocess.run([str(binary)], input=b'{"cniVersion": "1.0.0"}', capture_output=True, check=False,
                          env={"CNI_COMMAND": "VERSION", "RAILNET_AGENT_SOCKET": "/run/rnt-none/agent.sock"})
    assert proc.returncode == 0, proc
    return proc.stdout


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the Python shim is the fallback")
def test_the_package_build_ships_an_executable_native_shim(tmp_path: Path) -> None:
    """setup.py's build_py (what `pip install .` runs) compiles the shim into the package."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT,
                   check=True, capture_output=True)
    binary = tmp_path / "cni" / "native" / "railnet-shim"
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert version_answer(binary).startswith(b'{"cniVersion":"1.0.0","supportedVersions":[')


def test_the_package_build_goes_on_without_a_compiler(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT,
                          check=True, capture_output=True, text=True, env={**os.environ, "CC": "/nonexistent/cc"})
    assert "the native CNI shim is not built" in proc.stderr
    assert (tmp_path / "cni" / "shim.py").is_file()
    assert not (tmp_path / "cni" / "native" / "railnet-shim").exists()


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the Python shim is the fallback")
def test_this_install_has_a_current_native_shim_and_auto_picks_it() -> None:
    """The installed package (editable in development: `make setup`) carries the native shim."""
    shim = install.NATIVE_SHIM
    assert shim.is_file() and os.access(shim, os.X_OK), f"{shim} missing: reinstall railnet or run `make`"
    source = shim.with_name("shim.c")
    if source.exists():
        assert shim.stat().st_mtime >= source.stat().st_mtime, f"{shim} is older than shim.c: run `make`"
    assert install.choose("auto") == "native"
