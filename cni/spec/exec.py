"""Executing another CNI plugin binary (a delegated IPAM, later the primary network's plugin)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from cni.spec.errors import DELEGATE_FAILED, INVALID_CONFIG, CniError


def find_plugin(plugin_type: str, cni_path: list[str]) -> str:
    for directory in cni_path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f"CNI plugin {plugin_type!r} not found",
                   f"looked in CNI_PATH={':'.join(cni_path) or '(empty)'}")


def exec_plugin(plugin_type: str, command: str, config: dict[str, Any], env: dict[str, str],
                timeout: float = 60.0) -> dict[str, Any] | None:
    """Run the plugin; return its parsed stdout (None when empty) or raise its error as ours."""
    cni_path = [p for p in env.get("CNI_PATH", "").split(":") if p]
    binary = find_plugin(plugin_type, cni_path)
    child_env = {k: v for k, v in env.items() if k.startswith(("CNI_", "RAILNET_")) or k == "PATH"}
    child_env["CNI_COMMAND"] = command
    child_env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    try:
        proc = subprocess.run([binary], input=json.dumps(config).encode(), env=child_env,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CniError(DELEGATE_FAILED, f"delegate plugin {plugin_type} timed out after {timeout:.0f}s") from None
    out = proc.stdout.decode(errors="replace").strip()
    parsed: dict[str, Any] | None = None
    if out:
        try:
            parsed = json.loads(out)
        except json.JSONDecodeError:
            parsed = None
    if proc.returncode != 0:
        msg = (parsed or {}).get("msg") or proc.stderr.decode(errors="replace").strip() or out
        details = (parsed or {}).get("details", "")
        code = (parsed or {}).get("code", DELEGATE_FAILED)
        raise CniError(int(code) if isinstance(code, int) else DELEGATE_FAILED,
                       f"delegate plugin {plugin_type} failed on {command}: {msg}", str(details))
    return parsed
