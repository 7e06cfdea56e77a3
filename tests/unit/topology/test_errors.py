"""Bad input gives one-line errors that name the path; the CLI never prints a traceback."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from netmanager.topology.cli import main
from netmanager.topology.discover import discover
from netmanager.topology.sysfs import TopologyError
from railnet.dev.fixtures import BuiltServer

Make = Callable[[str], BuiltServer]


def _error(root: Path) -> str:
    with pytest.raises(TopologyError) as err:
        discover(root)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_root(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope") == f"sysfs root {tmp_path / 'nope'} does not exist or is not a directory"


def test_directory_that_is_not_sysfs(tmp_path: Path) -> None:
    assert _error(tmp_path) == f"{tmp_path}/bus/pci/devices is missing: {tmp_path} does not look like a sysfs tree"


def test_unreadable_attribute(make_fixture: Make) -> None:
    built = make_fixture("pcie-4gpu")
    class_file = built.root / "bus/pci/devices" / built.gpus[0].address / "class"
    real = class_file.resolve()
    real.unlink()
    real.mkdir()  # reading it fails with EISDIR, even as root (where chmod 000 would not)
    assert _error(built.root) == f"cannot read {real}: Is a directory"


def test_garbage_in_an_attribute(make_fixture: Make) -> None:
    built = make_fixture("pcie-4gpu")
    vendor = (built.root / "bus/pci/devices" / built.gpus[0].address / "vendor").resolve()
    vendor.write_text("nvidia\n")
    assert _error(built.root) == f"{vendor}: expected a hex id, found 'nvidia'"


def test_dangling_device_link(make_fixture: Make) -> None:
    built = make_fixture("pcie-4gpu")
    link = built.root / "bus/pci/devices/0000:ff:1f.7"
    os.symlink("../../../devices/pci0000:ff/0000:ff:1f.7", link)
    assert _error(built.root).startswith(f"cannot resolve link {link}: ")


def test_link_escaping_the_root(make_fixture: Make, tmp_path: Path) -> None:
    built = make_fixture("pcie-4gpu")
    outside = tmp_path / "elsewhere" / "0000:ee:00.0"
    outside.mkdir(parents=True)
    link = built.root / "bus/pci/devices/0000:ee:00.0"
    os.symlink(outside, link)
    assert _error(built.root) == f"link {link} points outside the sysfs root: {outside}"


def test_cli_reports_bad_root_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sysfs", str(tmp_path / "missing")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"railnet topo: error: sysfs root {tmp_path / 'missing'} does not exist or is not a directory\n"


def test_cli_reports_missing_nvidia_smi_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--fixture", "pcie-4gpu", "--nvidia-smi-topo", str(tmp_path / "topo.txt")]) == 1
    err = capsys.readouterr().err
    assert err == f"railnet topo: error: cannot read {tmp_path / 'topo.txt'}: No such file or directory\n"


def test_cli_reports_malformed_nvidia_smi_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "topo.txt").write_text("garbage\n")
    assert main(["--fixture", "pcie-4gpu", "--nvidia-smi-topo", str(tmp_path / "topo.txt")]) == 1
    err = capsys.readouterr().err
    assert err == f"railnet topo: error: {tmp_path / 'topo.txt'}: no matrix header starting with GPU0 found\n"


def test_cli_bad_usage_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--fixture", "dgx-z9000"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["--fixture", "sriov", "--sysfs", "/sys"]) == 2
