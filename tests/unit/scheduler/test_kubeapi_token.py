"""A rotated service-account token is picked up: the kubelet rewrites a projected token long before
it expires, and a client that read it once would be refused when the old one runs out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.live import kubeapi
from scheduler.live.kubeapi import Endpoint, KubeApi, _token_file


def test_token_file_is_reread_after_the_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    clock = [1000.0]
    monkeypatch.setattr(kubeapi.time, "monotonic", lambda: clock[0])
    ep = Endpoint("127.0.0.1", 1, None, token_file=str(token))
    api = KubeApi(ep)
    assert api._headers(None)["Authorization"] == "Bearer first"
    token.write_text("second\n")
    clock[0] += kubeapi.TOKEN_REREAD_S - 1
    assert api._headers(None)["Authorization"] == "Bearer first"  # not on every request
    clock[0] += 2
    assert api._headers(None)["Authorization"] == "Bearer second"
    token.unlink()  # mid-rotation: keep the last good token
    clock[0] += kubeapi.TOKEN_REREAD_S
    assert api._headers(None)["Authorization"] == "Bearer second"


def test_a_kubeconfig_names_its_token_file_only_for_the_current_user(tmp_path: Path) -> None:
    def write(users: list[dict[str, object]], current: str = "a") -> str:
        path = tmp_path / "kubeconfig"
        path.write_text(json.dumps({
            "current-context": current,
            "contexts": [{"name": "a", "context": {"user": "sa"}}, {"name": "b", "context": {"user": "admin"}}],
            "users": users}))
        return str(path)

    assert _token_file(write([{"name": "sa", "user": {"tokenFile": "/run/t"}}])) == "/run/t"
    assert _token_file(write([{"name": "sa", "user": {"tokenFile": "/run/t"}}], current="b")) is None
    assert _token_file(write([{"name": "sa", "user": {"token": "x", "tokenFile": "/run/t"}}])) is None
