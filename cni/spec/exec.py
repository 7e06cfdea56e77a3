"""Executing another CNI plugin binary (a delegated IPAM, later the primary network's plugin).

A plugin `type` comes from a network config, which whoever can write a NetworkAttachmentDefinition
controls, and the agent runs as root. So a type is a bare file name, looked up only in the
runtime's CNI_PATH, never a path (the bug class of CVE-2021-20206, which libcni's FindInPath
also refuses).

Execution is behind the `PluginExec` Protocol (libcni's invoke.Exec): callers take an executor,
so tests and the coming meta plugin can swap it without patching subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any, Protocol

from cni.spec.errors import DELEGATE_FAILED, INVALID_CONFIG, CniError
from cni.spec.hostroot import HOST_ROOT

_BARE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The agent in a container (the DaemonSet) runs delegates chrooted into the host's root (cni.spec.hostroot),
# as Multus's thick plugin does: the primary's plugin then sees the host exactly as under a runtime (its
# data dirs, its kubeconfig, iptables, the pod's netns). CNI_PATH stays in host paths.
CHROOT = "/usr/sbin/chroot"


def require_bare_name(plugin_type: str) -> str:
    """Refuse anything but a plain file name: no '/', no '..', nothing absolute, no hidden file."""
    if not isinstance(plugin_type, str) or not _BARE_NAME.fullmatch(plugin_type) or ".." in plugin_type:
        raise CniError(INVALID_CONFIG, f"invalid plugin type {plugin_type!r}",
                       "a plugin type is a bare binary name found in CNI_PATH (letters, digits, '.', '_', '-'), "
                       "never a path")
    return plugin_type


def find_plugin(plugin_type: str, cni_path: list[str]) -> str:
    require_bare_name(plugin_type)
    for directory in cni_path:
        if not os.path.isabs(directory):
            continue  # a relative CNI_PATH entry would resolve against the agent's cwd
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(HOST_ROOT + candidate) and os.access(HOST_ROOT + candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f"CNI plugin {plugin_type!r} not found",
                   f"looked in CNI_PATH={':'.join(cni_path) or '(empty)'}")


class PluginExec(Protocol):
    """Runs one CNI command of a plugin; returns its parsed stdout (None when empty) or raises
    its CNI error."""

    def __call__(self, plugin_type: str, command: str, config: dict[str, Any],
                 env: dict[str, str]) -> dict[str, Any] | None: ...


def exec_plugin(plugin_type: str, command: str, config: dict[str, Any], env: dict[str, str],
                timeout: float = 60.0) -> dict[str, Any] | None:
    """The real executor: find the binary in CNI_PATH and run it with the config on stdin."""
    cni_path = [p for p in env.get("CNI_PATH", "").split(":") if p]
    binary = find_plugin(plugin_type, cni_path)
    child_env = {k: v for k, v in env.items() if k.startswith(("CNI_", "RAILNET_")) or k == "PATH"}
    child_env["CNI_COMMAND"] = command
    child_env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    try:
        argv = [CHROOT, HOST_ROOT, binary] if HOST_ROOT else [binary]
        proc = subprocess.run(argv, input=json.dumps(config).encode(), env=child_env,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CniError(DELEGATE_FAILED, f"delegate plugin {plugin_type} timed out after {timeout:.0f}s") from None
    out = proc.stdout.decode(errors="replace").strip()
    parsed: dict[str, Any] | None = None
    if out:
        try:
            loaded = json.loads(out)
            parsed = loaded if isinstance(loaded, dict) else None
        except json.JSONDecodeError:
            parsed = None
    if proc.returncode != 0:
        msg = (parsed or {}).get("msg") or proc.stderr.decode(errors="replace").strip() or out
        details = (parsed or {}).get("details", "")
        code = (parsed or {}).get("code", DELEGATE_FAILED)
        raise CniError(int(code) if isinstance(code, int) else DELEGATE_FAILED,
                       f"delegate plugin {plugin_type} failed on {command}: {msg}", str(details))
    return parsed
