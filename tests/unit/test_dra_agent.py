"""The agent's --dra-driver flag: what it needs, and a driver that cannot start stops the agent with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from netmanager import agent


def test_dra_driver_needs_a_kubeconfig(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = agent.main(["--dra-driver", "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "a.sock")])
    assert code == 2
    assert "--dra-driver needs --kubeconfig" in capsys.readouterr().err


def test_a_driver_that_cannot_start_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = agent.main(["--dra-driver", "--kubeconfig", str(tmp_path / "missing.kubeconfig"), "--node-name", "n",
                       "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "a.sock"),
                       "--sysfs", str(tmp_path / "sys"), "--kubelet-dir", str(tmp_path / "kubelet")])
    assert code == 1
    err = capsys.readouterr().err
    assert "railnet agent: cannot start the DRA driver" in err and "Traceback" not in err
    assert not (tmp_path / "a.sock").exists()
