"""The agent's watch caches for the meta plugin: the pods bound to this node and every
NetworkAttachmentDefinition, kept by list + watch (resume from the last resourceVersion, relist on
410 Gone; the reflector is scheduler.live.reflector's, shared, not a copy).

Objects are trimmed on arrival (a pod keeps namespace, name, UID, annotations and its resource claims' names; a NAD its spec),
so the cache costs little on a node with many pods. Reads never wait for the watch: a miss (a pod
created moments ago that the watch has not delivered, a NAD just created, a cache still syncing),
or a cached pod whose UID is not the one being set up, falls back to a direct GET through
`KubePods`. Correctness therefore never depends on the watch being current; only speed does.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from cni.meta.kube import NAD, KubePods
from cni.meta.nad import nad_view
from cni.meta.plugin import Pod, PodSource, pod_claims
from scheduler.live.kubeapi import KubeApi, endpoint_from_config
from scheduler.live.reflector import Reflector

JSON = dict[str, Any]
T = TypeVar("T")
NAD_PATH = f"/apis/{NAD[0]}/{NAD[1]}/{NAD[2]}"


def pods_path(node_name: str) -> str:
    return "/api/v1/pods?fieldSelector=" + urllib.parse.quote(f"spec.nodeName={node_name}", safe="")


def _key(obj: JSON) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def trim_pod(obj: JSON) -> Pod:
    meta = obj.get("metadata") or {}
    return Pod(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", "")),
               dict(meta.get("annotations") or {}), pod_claims(obj))


def trim_nad(obj: JSON) -> JSON:
    return nad_view(obj)


class Store(Generic[T]):
    """One resource's trimmed objects by namespace/name, fed by a Reflector's handlers."""

    def __init__(self, trim: Callable[[JSON], T]) -> None:
        self.trim = trim
        self.lock = threading.Lock()
        self.items: dict[str, T] = {}

    def replace(self, objects: list[JSON]) -> None:
        fresh = {_key(o): self.trim(o) for o in objects}
        with self.lock:
            self.items = fresh

    def on_event(self, kind: str, obj: JSON) -> None:
        with self.lock:
            if kind == "DELETED":
                self.items.pop(_key(obj), None)
            else:
                self.items[_key(obj)] = self.trim(obj)

    def get(self, key: str) -> T | None:
        with self.lock:
            return self.items.get(key)

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)


class MetaCache:
    """A PodSource answering from the watch caches, with `KubePods` behind it for misses and writes."""

    def __init__(self, api: KubeApi, node_name: str, direct: PodSource) -> None:
        if not node_name:
            raise ValueError("the meta plugin's pod cache needs the node's name (--node-name)")
        self.direct = direct  # KubePods: GETs for misses, the network-status patch
        self.api = api
        self.pods = Store(trim_pod)
        self.nads = Store(trim_nad)
        self.stop_event = threading.Event()
        self.reflectors = [
            Reflector(self.api, pods_path(node_name), self.pods.replace, self.pods.on_event, self.stop_event,
                      name="meta-pods"),
            Reflector(self.api, NAD_PATH, self.nads.replace, self.nads.on_event, self.stop_event, name="meta-nads"),
        ]
        self.hits = 0
        self.misses = 0  # reads answered by a GET instead of the cache

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, node_name: str) -> MetaCache:
        api = KubeApi(endpoint_from_config(str(kubeconfig)), user_agent="railnet-agent/meta-cache")
        return cls(api, node_name, KubePods(kubeconfig))

    def start(self) -> None:
        for reflector in self.reflectors:
            reflector.start()

    def stop(self) -> None:
        self.stop_event.set()

    def wait_synced(self, timeout: float) -> bool:
        return all(r.synced.wait(timeout) for r in self.reflectors)

    def _count(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    # ---- PodSource ---------------------------------------------------------------------------------
    def pod(self, namespace: str, name: str, uid: str = "", fresh: bool = False) -> Pod | None:
        """The cached pod unless it is absent, of another UID (re-created: the watch lags), or
        `fresh` is asked for (a caller that found the cached copy lacking); then a GET."""
        cached = None if fresh else self.pods.get(f"{namespace}/{name}")
        if cached is not None and (not uid or cached.uid == uid):
            self._count(True)
            return cached
        self._count(False)
        return self.direct.pod(namespace, name)

    def nad(self, namespace: str, name: str) -> JSON | None:
        cached = self.nads.get(f"{namespace}/{name}")
        if cached is not None:
            self._count(True)
            return dict(cached)
        self._count(False)
        return self.direct.nad(namespace, name)

    def set_network_status(self, pod: Pod, value: str) -> None:
        self.direct.set_network_status(pod, value)
