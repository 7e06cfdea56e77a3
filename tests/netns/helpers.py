"""Helpers for the netns tests: a test's lab environment and network configs."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from railnet.dev.lab import REFERENCE_CNI_DIR, AgentProcess, Lab, PluginCall, ip, links_in, run_plugin

PREFIX = "rnt"


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


def macvlan_conf(master: str, version: str = "1.1.0", name: str = "rail0", **extra: Any) -> dict[str, Any]:
    ipam = extra.pop("ipam", {"type": "railnet-ipam", "ranges": [[{"subnet": "10.90.0.0/24"}]]})
    return {"cniVersion": version, "name": name, "type": "railnet-macvlan", "master": master, "ipam": ipam,
            **extra}
