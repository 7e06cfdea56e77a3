"""railnet.dev.k8sbin: where binaries live, when they count as built, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from railnet.dev import k8sbin


def _fake_build(directory: Path, versions: dict[str, str]) -> None:
    manifest = {"components": {}}
    for comp in k8sbin.COMPONENTS:
        for name in comp.binaries:
            (directory / name).write_text("#!/bin/sh\n")
            (directory / name).chmod(0o755)
        assets = k8sbin.asset_dir(comp.name, directory)
        for rel in comp.assets:
            assets.mkdir(exist_ok=True)
            (assets / Path(rel).name).write_text("")
        manifest["components"][comp.name] = {"version": versions.get(comp.name, comp.version)}
    (directory / k8sbin.MANIFEST).write_text(json.dumps(manifest))


def test_bin_dir_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(k8sbin.ENV_BIN_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert k8sbin.bin_dir() == tmp_path / "railnet" / "k8s-bin" / k8sbin.version_key()
    assert k8sbin.KUBERNETES_VERSION in k8sbin.version_key()
    monkeypatch.setenv(k8sbin.ENV_BIN_DIR, str(tmp_path / "mine"))
    assert k8sbin.bin_dir() == tmp_path / "mine"


def test_binaries_of_another_version_count_as_missing(tmp_path: Path) -> None:
    _fake_build(tmp_path, {})
    assert k8sbin.missing(tmp_path) == []
    _fake_build(tmp_path, {"etcd": "v3.5.0"})
    assert k8sbin.missing(tmp_path) == ["etcd"]
    (tmp_path / "kube-scheduler").unlink()
    assert k8sbin.missing(tmp_path) == ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]


def test_built_tree_is_a_noop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_build(tmp_path, {})
    monkeypatch.setenv(k8sbin.ENV_BIN_DIR, str(tmp_path))
    monkeypatch.setenv("PATH", "")  # proves no `go` is run
    said: list[str] = []
    assert k8sbin.build(log=said.append) == tmp_path
    assert said == [f"==> k8s binaries up to date in {tmp_path}"]


def test_missing_go_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(k8sbin.ENV_BIN_DIR, str(tmp_path))
    monkeypatch.setenv("PATH", "")
    with pytest.raises(k8sbin.BuildError, match="Go is not installed"):
        k8sbin.build(log=lambda _: None)


def test_the_real_binaries_are_built_at_the_pinned_versions() -> None:
    # conftest builds them during collection; here they must be complete.
    assert k8sbin.missing() == []
    assert k8sbin._staging_version(k8sbin.KUBERNETES_VERSION).startswith("v0.")
