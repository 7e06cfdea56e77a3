"""IPAM for an attachment driver: railnet-ipam in-process, any other IPAM type exec'd per the spec."""

from __future__ import annotations

from typing import Any

from cni.spec.exec import PluginExec, exec_plugin
from cni.spec.request import CniRequest
from cni.spec.versions import canonical_result
from ipam.plugin import IpamService

IN_PROCESS = "railnet-ipam"


def _ipam_type(config: dict[str, Any]) -> str:
    ipam = config.get("ipam")
    return str(ipam.get("type", "")) if isinstance(ipam, dict) else ""


class IpamCalls:
    def __init__(self, service: IpamService, run: PluginExec = exec_plugin) -> None:
        self.service = service
        self.run = run

    def add(self, req: CniRequest, config: dict[str, Any]) -> dict[str, Any]:
        if _ipam_type(config) == IN_PROCESS:
            return self.service.add(req, config)
        return canonical_result(self.run(_ipam_type(config), "ADD", config, req.env) or {})

    def delete(self, req: CniRequest, config: dict[str, Any]) -> None:
        if _ipam_type(config) in (IN_PROCESS, ""):
            self.service.delete(req, config)
        else:
            self.run(_ipam_type(config), "DEL", config, req.env)

    def check(self, req: CniRequest, config: dict[str, Any]) -> None:
        if _ipam_type(config) == IN_PROCESS:
            self.service.check(req, config)
        else:
            self.run(_ipam_type(config), "CHECK", config, req.env)

    def gc(self, req: CniRequest) -> None:
        if _ipam_type(req.config) == IN_PROCESS:
            self.service.gc(req)
        elif _ipam_type(req.config):
            self.run(_ipam_type(req.config), "GC", req.config, req.env)

    def status(self, req: CniRequest) -> None:
        if _ipam_type(req.config) == IN_PROCESS:
            self.service.status(req)
        elif _ipam_type(req.config):
            self.run(_ipam_type(req.config), "STATUS", req.config, req.env)
