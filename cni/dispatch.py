"""Turn one CNI invocation into the bytes a runtime expects: (exit code, stdout).

The plugin is chosen by the name the shim was exec'd as (the CNI 'type'), not by the config's
'type': when another plugin execs railnet-ipam, the config's top-level type is that plugin's.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Protocol

from cni.attachments import AttachmentStore
from cni.ipam_calls import IpamCalls
from cni.macvlan.plugin import MacvlanPlugin
from cni.spec.errors import INTERNAL, INVALID_CONFIG, IO_FAILURE, CniError
from cni.spec.request import CniRequest
from cni.spec.versions import LATEST, SUPPORTED, convert_result
from ipam.plugin import IpamService

log = logging.getLogger("railnet.cni")

# The plugin names the agent serves; `railnet install-cni` installs the shim under exactly these.
SERVED_PLUGINS = ("railnet-macvlan", "railnet-ipam")


class Plugin(Protocol):
    def add(self, req: CniRequest) -> dict[str, Any]: ...
    def delete(self, req: CniRequest) -> None: ...
    def check(self, req: CniRequest) -> None: ...
    def gc(self, req: CniRequest) -> None: ...
    def status(self, req: CniRequest) -> None: ...


class IpamPlugin:
    """railnet-ipam exec'd by another plugin: the abbreviated IPAM result."""

    def __init__(self, service: IpamService) -> None:
        self.service = service

    def add(self, req: CniRequest) -> dict[str, Any]:
        return self.service.add(req)

    def delete(self, req: CniRequest) -> None:
        self.service.delete(req)

    def check(self, req: CniRequest) -> None:
        self.service.check(req)

    def gc(self, req: CniRequest) -> None:
        self.service.gc(req)

    def status(self, req: CniRequest) -> None:
        self.service.status(req)


class Dispatcher:
    def __init__(self, ipam: IpamService, attachments: AttachmentStore, sysfs: Path) -> None:
        self.plugins: dict[str, Plugin] = {
            "railnet-macvlan": MacvlanPlugin(attachments, IpamCalls(ipam), sysfs),
            "railnet-ipam": IpamPlugin(ipam),
        }

    def handle(self, plugin_name: str, env: dict[str, str], stdin: str) -> tuple[int, str]:
        version = LATEST
        try:
            req = CniRequest.parse(env, stdin)
            version = req.cni_version
            if req.command == "VERSION":
                return 0, json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED)})
            plugin = self.plugins.get(plugin_name)
            if plugin is None:
                raise CniError(INVALID_CONFIG, f"unknown railnet plugin {plugin_name!r}",
                               f"install the shim as one of {', '.join(self.plugins)}")
            return 0, self._run(plugin, req)
        except CniError as exc:
            return 1, json.dumps(exc.to_object(version))
        except (sqlite3.Error, OSError) as exc:  # the state database or the disk under it
            log.exception("I/O failure")
            return 1, json.dumps(CniError(IO_FAILURE, f"I/O failure: {type(exc).__name__}: {exc}",
                                          "check the agent's state dir (disk full or damaged database?)")
                                 .to_object(version))
        except Exception as exc:  # a bug: still answer with a CNI error, and log the traceback
            log.exception("internal error")
            return 1, json.dumps(CniError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}",
                                          "see the railnet agent log").to_object(version))

    @staticmethod
    def _run(plugin: Plugin, req: CniRequest) -> str:
        if req.command == "ADD":
            return json.dumps(convert_result(plugin.add(req), req.cni_version))
        getattr(plugin, {"DEL": "delete", "CHECK": "check", "GC": "gc", "STATUS": "status"}[req.command])(req)
        return ""
