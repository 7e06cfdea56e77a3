"""List + watch of one resource (client-go's Reflector, small): resume from the last resourceVersion,
relist on 410 Gone, back off on errors. Handlers run on this thread; the cache locks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from scheduler.live.kubeapi import ApiError, KubeApi

JSON = dict[str, Any]
log = logging.getLogger("railnet.scheduler.reflector")


class Reflector(threading.Thread):
    def __init__(self, api: KubeApi, path: str, on_replace: Callable[[list[JSON]], None],
                 on_event: Callable[[str, JSON], None], stop: threading.Event, name: str = "",
                 resource_version: str = "", page: int = 500, optional: bool = False) -> None:
        super().__init__(daemon=True, name=f"reflector-{name or path}")
        self.api, self.path, self.page = api, path, page
        self.on_replace, self.on_event, self.stop = on_replace, on_event, stop
        self.rv = resource_version  # empty: start with a list
        self.lists = 0  # full lists done (the first one included)
        self.gone = 0  # 410 Gone answers that forced a relist
        self.synced = threading.Event()
        self.missing = False  # the resource is not served (e.g. a CRD that is not installed)
        self.optional = optional  # a 403 (not allowed to read it) counts as missing, not as unsynced

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                if not self.rv:
                    self.relist()
                for event in self.api.watch(self.path, self.rv):
                    if self.stop.is_set():
                        return
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            self.gone += 1
                            log.info("watch expired, relisting", extra={"path": self.path, "rv": self.rv})
                            self.rv = ""
                        else:
                            raise ApiError(int(obj.get("code") or 0), str(obj.get("message")))
                        break
                    self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                    if kind != "BOOKMARK":
                        self.on_event(str(kind), obj)
                backoff = 0.5
            except ApiError as exc:
                if exc.status == 404 or (exc.status == 403 and self.optional):
                    self.missing = True
                    self.synced.set()  # nothing to wait for; retried slowly in case it appears
                    backoff = 5.0
                else:
                    log.warning("watch failed", extra={"path": self.path, "error": str(exc)})
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as exc:  # connection drops, bad JSON: resume from the last rv
                log.warning("watch failed", extra={"path": self.path, "error": repr(exc)})
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def relist(self) -> None:
        """A full, consistent (quorum) list in pages; replaces the handler's store."""
        items: list[JSON] = []
        token = ""
        sep = "&" if "?" in self.path else "?"
        while True:
            query = f"{self.path}{sep}limit={self.page}" + (f"&continue={token}" if token else "")
            status, page = self.api.request("GET", query)
            if status == 410:  # the continue token expired: start over
                items, token = [], ""
                continue
            if status != 200:
                message = page.get("message") if isinstance(page, dict) else page
                raise ApiError(status, str(message))
            items += page.get("items") or []
            token = page["metadata"].get("continue") or ""
            if not token:
                break
        self.rv = page["metadata"]["resourceVersion"]
        self.missing = False
        self.lists += 1
        self.on_replace(items)
        self.synced.set()
