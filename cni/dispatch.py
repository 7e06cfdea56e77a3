"""Turn one CNI invocation into the bytes a runtime expects: (exit code, stdout).

The plugin is chosen by the name the shim was exec'd as (the CNI 'type'), not by the config's
'type': when another plugin execs railnet-ipam, the config's top-level type is that plugin's.
Each plugin's commands are an explicit table (as libcni's skel.CNIFuncs), and this is the one
place where an exception becomes a CNI error object.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cni.attachments import AttachmentStore
from cni.ipam_calls import IpamCalls
from cni.linux.netns import NetnsError
from cni.linux.rtnl import RtnlError
from cni.macvlan.plugin import MacvlanPlugin
from cni.meta.claims import ClaimSource
from cni.meta.devices import DeviceSource
from cni.meta.plugin import MetaPlugin, PodSource
from cni.spec.errors import INTERNAL, INVALID_CONFIG, IO_FAILURE, KERNEL_REFUSED, NETNS_FAILED, CniError
from cni.spec.exec import PluginExec, exec_plugin
from cni.spec.request import CniRequest
from cni.spec.versions import LATEST, SUPPORTED, convert_result
from cni.sriov.plugin import SriovPlugin
from ipam.plugin import IpamService

log = logging.getLogger("railnet.cni")

# The plugin names the agent serves; `railnet install-cni` installs the shim under exactly these.
SERVED_PLUGINS = ("railnet", "railnet-macvlan", "railnet-sriov", "railnet-ipam")


class Plugin(Protocol):
    def add(self, req: CniRequest) -> dict[str, Any]: ...
    # Only ADD has a result; what the others return is ignored.
    def delete(self, req: CniRequest) -> object: ...
    def check(self, req: CniRequest) -> object: ...
    def gc(self, req: CniRequest) -> object: ...
    def status(self, req: CniRequest) -> object: ...


Command = Callable[[CniRequest], object]


def command_table(plugin: Plugin) -> dict[str, Command]:
    return {"ADD": plugin.add, "DEL": plugin.delete, "CHECK": plugin.check, "GC": plugin.gc,
            "STATUS": plugin.status}


class InProcess:
    """A PluginExec for the meta plugin's delegates: railnet's own attachment plugins run here, in
    this agent (no exec, and no second request to the agent, which would wait on the container lock
    the meta plugin holds); every other type is exec'd from CNI_PATH."""

    def __init__(self, tables: dict[str, dict[str, Command]], fallback: PluginExec = exec_plugin) -> None:
        self.tables = tables
        self.fallback = fallback

    def __call__(self, plugin_type: str, command: str, config: dict[str, Any],
                 env: dict[str, str]) -> dict[str, Any] | None:
        if plugin_type == "railnet":
            raise CniError(INVALID_CONFIG, "a network delegated by the railnet meta plugin is itself 'railnet'",
                           "a NetworkAttachmentDefinition names an attachment plugin, e.g. railnet-macvlan")
        table = self.tables.get(plugin_type)
        if table is None:
            return self.fallback(plugin_type, command, config, env)
        req = CniRequest.parse({**env, "CNI_COMMAND": command}, json.dumps(config))
        result = table[command](req)
        if command == "ADD":
            assert isinstance(result, dict)
            return convert_result(result, req.cni_version)
        return None


class Dispatcher:
    def __init__(self, ipam: IpamService, attachments: AttachmentStore, sysfs: Path,
                 run: PluginExec = exec_plugin, pods: PodSource | None = None,
                 devices: DeviceSource | None = None, claims: ClaimSource | None = None) -> None:
        plugins: dict[str, Plugin] = {
            "railnet-macvlan": MacvlanPlugin(attachments, IpamCalls(ipam, run), sysfs),
            "railnet-sriov": SriovPlugin(attachments, IpamCalls(ipam, run), sysfs),
            "railnet-ipam": ipam,  # exec'd by another plugin: answers with the IPAM result
        }
        self.tables = {name: command_table(p) for name, p in plugins.items()}
        meta = MetaPlugin(attachments, pods, InProcess(dict(self.tables), run), devices, claims)
        self.tables = {"railnet": command_table(meta), **self.tables}
        assert tuple(self.tables) == SERVED_PLUGINS

    def handle(self, plugin_name: str, env: dict[str, str], stdin: str) -> tuple[int, str]:
        version = LATEST
        try:
            req = CniRequest.parse(env, stdin)
            version = req.cni_version
            if req.command == "VERSION":
                return 0, json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED)})
            table = self.tables.get(plugin_name)
            if table is None:
                raise CniError(INVALID_CONFIG, f"unknown railnet plugin {plugin_name!r}",
                               f"install the shim as one of {', '.join(self.tables)}")
            result = table[req.command](req)
            if req.command == "ADD":
                assert isinstance(result, dict)
                return 0, json.dumps(convert_result(result, req.cni_version))
            return 0, ""
        except CniError as exc:
            return 1, json.dumps(exc.to_object(version))
        except Exception as exc:
            return 1, json.dumps(unexpected(exc).to_object(version))


def unexpected(exc: Exception) -> CniError:
    """An exception no plugin turned into a CniError, classified by where it came from."""
    if isinstance(exc, RtnlError):
        return CniError(KERNEL_REFUSED, f"kernel refused a netlink request: {exc.strerror}", f"errno {exc.errno}")
    if isinstance(exc, NetnsError):
        return CniError(NETNS_FAILED, f"network namespace error: {exc.strerror}",
                        f"errno {exc.errno}; is the container's netns still there?")
    if isinstance(exc, sqlite3.Error):  # the state database or the disk under it
        log.exception("state database failure")
        return CniError(IO_FAILURE, f"state database failure: {type(exc).__name__}: {exc}",
                        "check the agent's state dir (disk full or damaged database?)")
    log.exception("internal error")  # a bug, or a system call nobody expected to fail
    return CniError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "see the railnet agent log")
