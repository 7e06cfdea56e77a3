"""Running a network config list the way libcni does (the runtime's side of the spec).

No railnet plugin calls it yet: today the tests use it to run real conflists through the shim
and the reference plugins (tests/netns/test_conflist.py). The planned `railnet` meta plugin will
use it to delegate to the pod's primary network. ADD runs the plugins in order, each getting the
previous result as `prevResult`; DEL runs them in reverse with the final ADD result; CHECK passes
the final result to each.
"""

from __future__ import annotations

from typing import Any

from cni.spec.errors import INCOMPATIBLE_VERSION, INVALID_CONFIG, CniError
from cni.spec.exec import PluginExec, exec_plugin
from cni.spec.rollback import Rollback
from cni.spec.versions import SUPPORTED, version_key


def negotiate(conflist: dict[str, Any]) -> str:
    """`cniVersions` (1.1.0): the highest version both sides know; else the list's `cniVersion`."""
    offered = conflist.get("cniVersions")
    if isinstance(offered, list) and offered:
        common = [v for v in offered if v in SUPPORTED]
        if not common:
            raise CniError(INCOMPATIBLE_VERSION, f"no common CNI version in cniVersions {offered}",
                           f"railnet supports {', '.join(SUPPORTED)}")
        return str(max(common, key=version_key))
    version = conflist.get("cniVersion")
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"unsupported cniVersion {version!r}")
    return str(version)


def plugin_config(conflist: dict[str, Any], plugin: dict[str, Any], version: str,
                  prev: dict[str, Any] | None) -> dict[str, Any]:
    conf = {**plugin, "name": conflist["name"], "cniVersion": version}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def _plugins(conflist: dict[str, Any]) -> list[dict[str, Any]]:
    plugins = conflist.get("plugins")
    if not isinstance(plugins, list) or not plugins or not conflist.get("name"):
        raise CniError(INVALID_CONFIG, "a network config list needs 'name' and a non-empty 'plugins' list")
    return plugins


def add(conflist: dict[str, Any], env: dict[str, str], run: PluginExec = exec_plugin) -> dict[str, Any]:
    """ADD through every plugin; on a failure DEL the ones already added (spec section 4)."""
    version = negotiate(conflist)
    prev: dict[str, Any] | None = None
    with Rollback(f"conflist {conflist.get('name')} ADD") as rollback:
        for plugin in _plugins(conflist):
            conf = plugin_config(conflist, plugin, version, prev)
            prev = run(plugin["type"], "ADD", conf, env) or prev
            # The undo reads `prev` when it runs: DEL gets the last result, as libcni passes it.
            rollback.push(plugin["type"], lambda p=plugin: run(  # type: ignore[misc]
                p["type"], "DEL", plugin_config(conflist, p, version, prev), env))  # noqa: B023
    return prev or {"cniVersion": version}


def delete(conflist: dict[str, Any], env: dict[str, str], result: dict[str, Any] | None,
           run: PluginExec = exec_plugin) -> None:
    """DEL in reverse order; every plugin runs even if one fails, and the first error is raised."""
    version = negotiate(conflist)
    first: CniError | None = None
    for plugin in reversed(_plugins(conflist)):
        try:
            run(plugin["type"], "DEL", plugin_config(conflist, plugin, version, result), env)
        except CniError as exc:
            first = first or exc
    if first is not None:
        raise first


def check(conflist: dict[str, Any], env: dict[str, str], result: dict[str, Any],
          run: PluginExec = exec_plugin) -> None:
    version = negotiate(conflist)
    for plugin in _plugins(conflist):
        run(plugin["type"], "CHECK", plugin_config(conflist, plugin, version, result), env)
