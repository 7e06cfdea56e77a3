"""The node's `railnet` network config: placed first in the CNI conf dir, wrapping whatever primary
network the node already has (as Multus generates its config). The runtime uses the first file
by name, so `00-railnet.conflist` takes over; the primary's own file stays where it is, which makes
uninstalling just removing ours.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cni.spec.versions import SUPPORTED

META_FILE = "00-railnet.conflist"
SUFFIXES = (".conflist", ".conf", ".json")


def primary_network(conf_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The network the runtime would use without railnet: the first readable config that is not ours."""
    for path in sorted(p for p in conf_dir.iterdir() if p.suffix in SUFFIXES and p.name != META_FILE):
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and isinstance(config.get("name"), str):
            return path, config
    raise FileNotFoundError(f"no primary network config in {conf_dir}: install the cluster's CNI (e.g. Calico) first")


def write(conf_dir: Path, **options: Any) -> Path:
    """Write (atomically) the railnet conflist for the primary found in `conf_dir`."""
    _, primary = primary_network(conf_dir)
    version = primary.get("cniVersion") if primary.get("cniVersion") in SUPPORTED else "1.0.0"
    conf = {"cniVersion": version, "name": "railnet",
            "plugins": [{"type": "railnet", "clusterNetwork": primary["name"], "confDir": str(conf_dir), **options}]}
    target = conf_dir / META_FILE
    tmp = conf_dir / f".{META_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(conf, indent=2) + "\n")
    tmp.replace(target)
    return target


def remove(conf_dir: Path) -> bool:
    """Uninstall: drop our file; the primary's file was never touched."""
    try:
        (conf_dir / META_FILE).unlink()
        return True
    except FileNotFoundError:
        return False
