"""railnet.dev.peers: where the bench-only peers live and when one counts as built (no Go build here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from railnet.dev import peers
from railnet.dev.k8sbin import BuildError


@pytest.fixture
def peers_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(peers.ENV_BIN_DIR, str(tmp_path / "peers" / "whereabouts"))
    return tmp_path / "peers"


def _fake_training_operator(directory: Path, version: str = peers.TRAINING_OPERATOR_VERSION) -> None:
    comp = peers.TRAINING_OPERATOR
    (directory / f"{comp.name}-assets").mkdir(parents=True)
    for rel in comp.assets:
        (directory / f"{comp.name}-assets" / Path(rel).name).write_text("kind: CustomResourceDefinition\n")
    binary = directory / comp.name
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (directory / "manifest.json").write_text(json.dumps({comp.name: {"version": version}}))


def test_training_operator_has_its_own_versioned_directory(peers_home: Path) -> None:
    assert peers.training_operator_dir() == peers_home / f"training-operator-{peers.TRAINING_OPERATOR_VERSION}"
    # adding the operator did not change the whereabouts directory (no rebuild of the other peers)
    assert peers.version_key() == f"whereabouts-{peers.WHEREABOUTS_VERSION}"


def test_training_operator_counts_as_built_only_with_binary_crds_and_pinned_version(peers_home: Path) -> None:
    assert peers.training_operator_missing()
    with pytest.raises(BuildError, match="python -m railnet.dev.peers build"):
        peers.training_operator_binary()
    directory = peers.training_operator_dir()
    _fake_training_operator(directory)
    assert not peers.training_operator_missing()
    assert peers.training_operator_binary() == directory / "training-operator"
    assert peers.training_operator_crd("pytorchjobs").read_text().startswith("kind: CustomResourceDefinition")
    assert peers.training_operator_crd("tfjobs").is_file()
    peers.training_operator_crd("tfjobs").unlink()  # a missing CRD asset means: build again
    assert peers.training_operator_missing()


def test_another_version_in_the_directory_is_not_taken(peers_home: Path) -> None:
    _fake_training_operator(peers.training_operator_dir(), version="v1.7.0")
    assert peers.training_operator_missing()


def test_pinned_main_package_and_crds_come_from_the_same_module() -> None:
    comp = peers.TRAINING_OPERATOR
    assert comp.module == "github.com/kubeflow/training-operator" and comp.version == "v1.8.1"
    assert all(p.startswith(comp.module + "/cmd/") for p in comp.packages)
    assert {Path(a).name for a in comp.assets} == {"kubeflow.org_pytorchjobs.yaml", "kubeflow.org_tfjobs.yaml"}
