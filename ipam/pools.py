"""Named pools, defined once in the agent's pools directory and referenced by name.

A file `<dir>/<name>.json` (or .yaml) holds a PoolSpec. Files are re-read when they change, so
an operator can add a pool without restarting the agent. The cluster store (IPPool CRDs) will
feed the same registry.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import yaml
from pydantic import ValidationError

from cni.spec.errors import INVALID_CONFIG, CniError
from ipam.config import PoolSpec, validation_error


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
                       f"create {self.directory}/{name}.json with 'ranges' (host-local format)")

    @staticmethod
    def _load(path: Path) -> PoolSpec:
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise CniError(INVALID_CONFIG, f"cannot read IP pool file {path}", str(exc)) from None
        try:
            return PoolSpec.model_validate(data.get("spec", data) if isinstance(data, dict) else data)
        except ValidationError as exc:
            raise validation_error(f"IP pool file {path}", exc) from None
