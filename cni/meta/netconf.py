"""The node's `railnet` network config: placed first in the CNI conf dir, wrapping whatever primary
network the node already has (as Multus generates its config). The runtime uses the first file
by name, so `00-railnet.conflist` takes over; the primary's own file stays where it is, untouched,
which makes uninstalling just removing ours.

Everything here runs as root on every node with values from a chart: the primary's file name is a
bare name inside the conf dir, the file is checked before anything is written, and a config that
would not be the runtime's first choice is refused (the node would silently never call railnet).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cni.spec.versions import SUPPORTED

META_FILE = "00-railnet.conflist"
SUFFIXES = (".conflist", ".conf", ".json")
MAX_CONF_BYTES = 1 << 20


class ConfError(ValueError):
    """The conf dir or the primary network config is not usable; the message says what to fix."""


def _configs(conf_dir: Path) -> list[Path]:
    if not conf_dir.is_dir():
        raise ConfError(f"CNI conf dir {conf_dir} does not exist: point --conf-dir (chart value cni.confDir) "
                        "at the directory the container runtime reads network configs from")
    return sorted(p for p in conf_dir.iterdir() if p.suffix in SUFFIXES and p.name != META_FILE)


def _parse(path: Path) -> dict[str, Any]:
    """A network config (single plugin or list) as the runtime would accept it, or ConfError saying why not."""
    if path.is_symlink() or not path.is_file():
        raise ConfError(f"{path} is not a regular file")
    if path.stat().st_size > MAX_CONF_BYTES:
        raise ConfError(f"{path} is larger than {MAX_CONF_BYTES >> 10} KiB: not a network config")
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("name"), str) or not config["name"]:
        raise ConfError(f"{path} has no network name (a string 'name' at the top level)")
    if path.suffix == ".conflist":
        plugins = config.get("plugins")
        if not isinstance(plugins, list) or not plugins or not all(
                isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
            raise ConfError(f"{path} is a conflist without plugins (a non-empty list of objects with a 'type')")
    elif not isinstance(config.get("type"), str):
        raise ConfError(f"{path} is a single-plugin config without a 'type'")
    if any(p.get("type") == "railnet" for p in config.get("plugins", [config]) if isinstance(p, dict)):
        raise ConfError(f"{path} is a railnet config itself: the primary must be the cluster's own network")
    return config


def primary_network(conf_dir: Path, name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The network railnet wraps: the file `name` in `conf_dir` when given (it must exist and be valid),
    else the first valid config that is not ours (what the runtime would use without railnet)."""
    configs = _configs(conf_dir)
    if name is not None:
        if not name or "/" in name or name in (".", "..") or "\0" in name or not name.endswith(SUFFIXES):
            raise ConfError(f"primary conflist {name!r} must be a bare file name ending in "
                            f"{', '.join(SUFFIXES)} inside {conf_dir}")
        if name == META_FILE:
            raise ConfError(f"primary conflist {name!r} is railnet's own file: name the cluster network's file")
        path = conf_dir / name
        if not path.exists() and not path.is_symlink():
            present = ", ".join(p.name for p in configs) or "none"
            raise ConfError(f"primary conflist {path} does not exist (configs present: {present}): set "
                            "primaryConflist (--primary-conflist) to the cluster network's file, or install "
                            "the cluster's CNI first")
        return path, _parse(path)
    for path in configs:
        try:
            return path, _parse(path)
        except ConfError:
            continue
    raise ConfError(f"no primary network config in {conf_dir}: install the cluster's CNI (e.g. Calico) first")


def render(conf_dir: Path, primary: dict[str, Any], **options: Any) -> dict[str, Any]:
    version = primary.get("cniVersion") if primary.get("cniVersion") in SUPPORTED else "1.0.0"
    return {"cniVersion": version, "name": "railnet",
            "plugins": [{"type": "railnet", "clusterNetwork": primary["name"], "confDir": str(conf_dir), **options}]}


def check(conf_dir: Path, primary_name: str | None = None) -> dict[str, Any]:
    """Everything `write` needs, checked without writing: the primary's config, and that ours will be first."""
    _, primary = primary_network(conf_dir, primary_name)
    ahead = [p.name for p in _configs(conf_dir) if p.name < META_FILE]
    if ahead:
        raise ConfError(f"{', '.join(ahead)} sort before {META_FILE} in {conf_dir}, so the runtime would keep "
                        "using them and never call railnet: rename them (e.g. to 10-<name>)")
    return primary


def write(conf_dir: Path, primary_name: str | None = None, **options: Any) -> Path:
    """Write (atomically: temp file + rename) the railnet conflist wrapping the primary. Checks first,
    so a refused config leaves the conf dir exactly as it was."""
    primary = check(conf_dir, primary_name)
    target = conf_dir / META_FILE
    tmp = conf_dir / f".{META_FILE}.tmp{os.getpid()}"
    try:
        tmp.write_text(json.dumps(render(conf_dir, primary, **options), indent=2) + "\n")
        tmp.chmod(0o644)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def remove(conf_dir: Path) -> bool:
    """Uninstall: drop our file (only when it is ours); the primary's file was never touched."""
    target = conf_dir / META_FILE
    try:
        config = json.loads(target.read_bytes()) if target.is_file() and not target.is_symlink() else None
    except (OSError, ValueError):
        config = None
    if not (isinstance(config, dict) and config.get("name") == "railnet"):
        return False
    target.unlink()
    return True
