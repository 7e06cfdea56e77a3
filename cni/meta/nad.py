"""From a NetworkAttachmentDefinition to the delegate config list the meta plugin runs.

`spec.config` is a single network config or a conflist (JSON text). A NAD without `spec.config`
names a file in the node's CNI conf dir instead (Multus's convention): the file whose network
`name` equals the NAD's name. Either way the result is a conflist, so one runner (cni.spec.conflist)
executes every delegate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cni.meta.devices import RESOURCE_NAME_ANNOTATION
from cni.spec.errors import INVALID_CONFIG, CniError
from cni.spec.exec import require_bare_name

CONF_SUFFIXES = (".conflist", ".conf", ".json")


def as_conflist(config: dict[str, Any], where: str) -> dict[str, Any]:
    """A single network config becomes a one-plugin list; a list is checked and returned."""
    if "plugins" in config:
        plugins = config["plugins"]
        if not isinstance(plugins, list) or not plugins or not all(isinstance(p, dict) for p in plugins):
            raise CniError(INVALID_CONFIG, f"{where}: 'plugins' must be a non-empty list of objects")
        conflist = dict(config)
    else:
        plugin = {k: v for k, v in config.items() if k not in ("cniVersion", "name")}
        conflist = {"cniVersion": config.get("cniVersion"), "name": config.get("name"), "plugins": [plugin]}
    if not isinstance(conflist.get("name"), str) or not conflist["name"]:
        raise CniError(INVALID_CONFIG, f"{where}: the network config has no 'name'")
    if not isinstance(conflist.get("cniVersion"), str) and not conflist.get("cniVersions"):
        raise CniError(INVALID_CONFIG, f"{where}: the network config has no 'cniVersion'")
    for plugin in conflist["plugins"]:
        require_bare_name(plugin.get("type", ""))  # refused before anything runs
    return conflist


def nad_view(obj: Any) -> dict[str, Any]:
    """What the plugin keeps of a NAD object: its spec, plus its resourceName annotation under that
    annotation's key (a key no spec field can have)."""
    if not isinstance(obj, dict):
        return {}
    spec = obj.get("spec")
    view = dict(spec) if isinstance(spec, dict) else {}
    resource = ((obj.get("metadata") or {}).get("annotations") or {}).get(RESOURCE_NAME_ANNOTATION)
    if isinstance(resource, str) and resource:
        view[RESOURCE_NAME_ANNOTATION] = resource
    return view


def from_nad(namespace: str, name: str, spec: dict[str, Any] | None, conf_dir: Path) -> dict[str, Any]:
    where = f"NetworkAttachmentDefinition {namespace}/{name}"
    text = (spec or {}).get("config")
    if not text:
        return from_conf_dir(name, conf_dir, where)
    try:
        config = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise CniError(INVALID_CONFIG, f"{where}: spec.config is not valid JSON", str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(INVALID_CONFIG, f"{where}: spec.config must be a JSON object")
    config.setdefault("name", name)  # Multus fills a missing name from the NAD's
    return as_conflist(config, where)


def from_conf_dir(name: str, conf_dir: Path, where: str = "") -> dict[str, Any]:
    """The config file in the CNI conf dir whose network `name` is `name` (files in name order)."""
    where = where or f"network {name!r}"
    if conf_dir.is_dir():
        for path in sorted(p for p in conf_dir.iterdir() if p.suffix in CONF_SUFFIXES and p.is_file()):
            try:
                config = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # another tool's broken file is not ours to judge here
            if isinstance(config, dict) and config.get("name") == name:
                return as_conflist(config, f"{where} ({path})")
    raise CniError(INVALID_CONFIG, f"{where}: no config found",
                   f"the NAD has no spec.config and no file in {conf_dir} names a network {name!r}")
