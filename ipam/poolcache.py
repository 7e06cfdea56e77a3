"""The agent's copy of the cluster's IPPools: list, then watch from the list's resourceVersion.

A watch that fails with 410 Gone (its resourceVersion was compacted) or drops is followed by a fresh
list, so the cache never misses a change for long. Reads never wait for the API server: an ADD uses
what the cache holds and only asks the API server for a pool the cache has not seen.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import ValidationError

from ipam.crd import IPPool, IPPoolSpec
from ipam.kubeapi import ApiError, KubeApi

log = logging.getLogger("railnet.ipam.pools")


class PoolCache:
    def __init__(self, api: KubeApi, watch_timeout: int = 60) -> None:
        self.api = api
        self.watch_timeout = watch_timeout
        self._pools: dict[str, IPPoolSpec | str] = {}  # name -> spec, or why the object is invalid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.synced = threading.Event()
        self.relists = 0  # how many lists were made (first one included); tests read it
        self._thread = threading.Thread(target=self._run, name="ippool-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def get(self, name: str) -> IPPoolSpec | str | None:
        """The pool's spec, an error text for an invalid object, or None when the cluster has no such pool."""
        with self._lock:
            if name in self._pools:
                return self._pools[name]
        try:  # not seen (yet): a fresh pool the watch has not delivered, or a cache still syncing
            obj = self.api.get_pool(name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        self._put(obj)
        with self._lock:
            return self._pools.get(name)

    def all(self) -> dict[str, IPPoolSpec]:
        with self._lock:
            return {n: s for n, s in self._pools.items() if isinstance(s, IPPoolSpec)}

    def _put(self, obj: dict[str, Any]) -> None:
        name = str(obj.get("metadata", {}).get("name", ""))
        try:
            value: IPPoolSpec | str = IPPool.model_validate(obj).spec
        except ValidationError as exc:
            value = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        with self._lock:
            self._pools[name] = value

    def _relist(self) -> str:
        listed = self.api.list_pools()
        self.relists += 1
        fresh: dict[str, IPPoolSpec | str] = {}
        with self._lock:
            self._pools = fresh
        for obj in listed.get("items", []):
            self._put(obj)
        self.synced.set()
        return str(listed["metadata"]["resourceVersion"])

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                for event in self.api.watch_pools(rv, self.watch_timeout):
                    obj = event["object"]
                    rv = str(obj.get("metadata", {}).get("resourceVersion", rv))
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "DELETED":
                        with self._lock:
                            self._pools.pop(str(obj["metadata"]["name"]), None)
                    else:
                        self._put(obj)
                    if self._stop.is_set():
                        return
            except ApiError as exc:
                if exc.status == 410:
                    log.info("ippool watch expired (410 Gone); relisting")
                else:
                    log.warning("ippool watch failed: %s; relisting", exc)
                    self._stop.wait(1.0)
                rv = None
