"""Fixtures for tests that create real network namespaces and links (root required).

Every namespace/link is created through a Lab, whose finalizer removes it even when the test
fails; a session-end check fails the run if anything named like ours is left on the machine.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from railnet.lab import REFERENCE_CNI_DIR, AgentProcess, Lab, PluginCall, ip, links_in, run_plugin

PREFIX = "rnt"
_prefixes: set[str] = set()  # labs made by this test session (another run may be going on beside it)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/netns" in str(item.fspath):
            item.add_marker(pytest.mark.netns)


@pytest.fixture(scope="session", autouse=True)
def _root_and_no_leftovers() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("the netns tests need root (they create namespaces and veth links)")
    if not (REFERENCE_CNI_DIR / "macvlan").exists():
        pytest.fail(f"reference CNI plugins missing in {REFERENCE_CNI_DIR}: apt-get install containernetworking-plugins")
    yield
    mine = tuple(_prefixes) or ("\0",)
    left = [n for n in ip("netns", "list").split() if n.startswith(mine)]
    left += [line.split(":")[1].strip() for line in ip("-o", "link").splitlines()
             if line.split(":")[1].strip().startswith(mine)]
    assert not left, f"tests left these behind: {left}"


@dataclass
class Env:
    """One test's lab: a parent NIC, a running agent, the installed shim."""

    lab: Lab
    nic: str
    agent: AgentProcess
    bin_dir: Path

    def call(self, plugin: str, command: str, config: dict[str, Any] | str, *, cid: str = "",
             ifname: str = "", netns: str = "", args: str = "", env: dict[str, str] | None = None) -> PluginCall:
        return run_plugin(self.bin_dir / plugin, command, config, container_id=cid, ifname=ifname,
                          netns=netns, cni_path=[self.bin_dir, REFERENCE_CNI_DIR],
                          env={**self.agent.env(), **(env or {})}, args=args)

    def allocations(self) -> int:
        with sqlite3.connect(self.agent.db_path) as db:
            return int(db.execute("SELECT COUNT(*) FROM ipam_allocation").fetchone()[0])

    def records(self) -> int:
        with sqlite3.connect(self.agent.db_path) as db:
            return int(db.execute("SELECT COUNT(*) FROM attachment").fetchone()[0])

    def assert_clean(self, *netns_paths: str) -> None:
        """Nothing left: no interface but lo in the pods, no IP held, no attachment record."""
        for path in netns_paths:
            assert links_in(path) == ["lo"], f"{path} still has {links_in(path)}"
            rules = ip("-n", Path(path).name, "rule")
            assert "lookup 1" not in rules.replace("lookup local", ""), f"policy rules left: {rules}"
        assert self.allocations() == 0
        assert self.records() == 0


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(PREFIX) as lab:
        _prefixes.add(lab.prefix)
        yield lab


@pytest.fixture
def env(lab: Lab) -> Env:
    return Env(lab, lab.nic("nic"), lab.agent(), lab.install_shim())


def macvlan_conf(master: str, version: str = "1.1.0", name: str = "rail0", **extra: Any) -> dict[str, Any]:
    ipam = extra.pop("ipam", {"type": "railnet-ipam", "ranges": [[{"subnet": "10.90.0.0/24"}]]})
    return {"cniVersion": version, "name": name, "type": "railnet-macvlan", "master": master, "ipam": ipam,
            **extra}
