"""Named pools, defined once in the agent's pools directory and referenced by name.

A file `<dir>/<name>.json` (or .yaml) holds an IPPool object, as applied to the cluster (e.g.
deploy/examples/ippool-rail0.yaml), or just its `spec`: the one pool schema, validated by the CRD's
model (ipam/crd.py) and converted to the allocator's range sets by `IPPoolSpec.to_pool_spec`.
Files are re-read when they change, so an operator can add a pool without restarting the agent.
The cluster store (IPPool CRDs) will feed the same registry.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cni.spec.errors import INVALID_CONFIG, CniError
from ipam.config import PoolSpec, validation_error
from ipam.crd import KIND, IPPool, IPPoolSpec


class PoolRegistry:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._cache: dict[str, tuple[float, PoolSpec]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> PoolSpec:
        path = self._find(name)
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._cache.get(name)
            if cached and cached[0] == mtime:
                return cached[1]
        spec = self._load(path)
        with self._lock:
            self._cache[name] = (mtime, spec)
        return spec

    def _find(self, name: str) -> Path:
        if self.directory is not None and "/" not in name:
            for suffix in (".json", ".yaml", ".yml"):
                path = self.directory / f"{name}{suffix}"
                if path.is_file():
                    return path
        raise CniError(INVALID_CONFIG, f"IP pool {name!r} is not defined",
                       f"create {self.directory}/{name}.yaml holding an IPPool (see deploy/examples/ippool-rail0.yaml)")

    @staticmethod
    def _load(path: Path) -> PoolSpec:
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise CniError(INVALID_CONFIG, f"cannot read IP pool file {path}", str(exc)) from None
        return pool_spec(data, f"IP pool file {path}", path.stem)


def pool_spec(data: Any, what: str, name: str | None = None) -> PoolSpec:
    """An IPPool object or its bare spec, validated by the CRD's model, as the allocator's PoolSpec."""
    if not isinstance(data, dict):
        raise CniError(INVALID_CONFIG, f"{what} is not an IPPool object",
                       "write an IPPool (apiVersion, kind, metadata, spec) or just its spec")
    ranges = data.get("ranges")
    if isinstance(ranges, list) and ranges and isinstance(ranges[0], list):
        raise CniError(INVALID_CONFIG, f"{what} uses host-local range sets, which pools no longer take",
                       "write an IPPool spec instead: {subnet, ranges: [{start, end}], exclude, gateway, routes}; "
                       "host-local 'ranges' stay valid inline in a network config")
    try:
        if "spec" in data or "kind" in data:
            pool = IPPool.model_validate(data)
            if pool.kind != KIND:
                raise CniError(INVALID_CONFIG, f"{what} holds a {pool.kind}, not an {KIND}",
                               f"write an {KIND} object")
            declared = pool.metadata.get("name")
            if name is not None and declared not in (None, name):
                raise CniError(INVALID_CONFIG, f"{what} defines IPPool {declared!r}, not {name!r}",
                               f"name the file {declared}.yaml or set metadata.name to {name!r}")
            spec = pool.spec
        else:
            spec = IPPoolSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(what, exc) from None
    return spec.to_pool_spec()
