"""`railnet topo` output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from netmanager.topology.cli import main
from netmanager.topology.model import NodeTopology
from railnet.dev.fixtures import build_fixture


def test_fixture_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--fixture", "hgx-h100"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Node hgx-h100: 2 socket(s), NUMA->socket {0: 0, 1: 1}, 8 GPU(s), 8 RDMA NIC(s)"
    gpu0 = next(line for line in lines if line.startswith("GPU0 "))
    assert gpu0.split() == ["GPU0", "X"] + ["NV18"] * 7 + ["PIX", "NODE", "NODE", "NODE"] + ["SYS"] * 4 + ["0", "0"]
    assert "NIC0  enp25s0np0   mlx5_0  0000:19:00.0  Ethernet  400 Gb/s" in out


def test_fixture_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--fixture", "sriov", "--json", "--node-name", "n1"]) == 0
    topo = NodeTopology.model_validate_json(capsys.readouterr().out)
    assert topo.node_name == "n1" and len(topo.nics) == 10


def test_sysfs_and_nvidia_smi_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from railnet.dev.fixtures import nvidia_smi_topo

    built = build_fixture("hgx-a100", tmp_path / "sys")
    (tmp_path / "topo.txt").write_text(nvidia_smi_topo(built))
    assert main(["--sysfs", str(built.root), "--nvidia-smi-topo", str(tmp_path / "topo.txt")]) == 0
    out = capsys.readouterr().out
    gpu0 = next(line for line in out.splitlines() if line.startswith("GPU0 "))
    assert gpu0.split()[1:12] == ["X"] + ["NV12"] * 7 + ["PIX", "PXB", "SKT"]


def test_runs_as_a_module(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "netmanager.topology.cli", "--fixture", "pcie-4gpu"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "GPU3    SYS     SYS     NODE     X      SYS     PHB" in result.stdout
