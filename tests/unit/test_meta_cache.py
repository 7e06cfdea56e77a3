"""The meta plugin's watch caches without an API server: trimming, watch events, and the GET
fallback on a miss, on a UID mismatch and when a fresh copy is asked for."""

from __future__ import annotations

import threading
import time
from typing import Any

from cni.meta.cache import MetaCache, pods_path
from cni.meta.plugin import Pod


class Direct:
    """Stands in for KubePods: counts GETs, answers from dicts."""

    def __init__(self) -> None:
        self.pods: dict[str, Pod] = {}
        self.nads: dict[str, dict[str, Any]] = {}
        self.gets: list[str] = []

    def pod(self, namespace: str, name: str, uid: str = "", fresh: bool = False) -> Pod | None:
        self.gets.append(f"pod {namespace}/{name}")
        return self.pods.get(f"{namespace}/{name}")

    def nad(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets.append(f"nad {namespace}/{name}")
        return self.nads.get(f"{namespace}/{name}")

    def set_network_status(self, pod: Pod, value: str) -> None:
        self.gets.append("patch")


def pod_obj(name: str, uid: str, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": name, "uid": uid, "annotations": annotations,
                         "managedFields": [{"manager": "x"}], "resourceVersion": "7"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Pending"}}


def nad_obj(name: str, config: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": name}, "spec": {"config": config}}


def make() -> tuple[MetaCache, Direct]:
    direct = Direct()
    return MetaCache(api=None, node_name="n1", direct=direct), direct  # type: ignore[arg-type]


def test_the_pod_watch_is_filtered_to_the_node() -> None:
    assert pods_path("gpu-7") == "/api/v1/pods?fieldSelector=spec.nodeName%3Dgpu-7"


def test_hits_are_trimmed_and_make_no_request() -> None:
    cache, direct = make()
    cache.pods.replace([pod_obj("a", "u1", **{"k8s.v1.cni.cncf.io/networks": "rail0"})])
    cache.nads.replace([nad_obj("rail0", "{}")])
    assert cache.pod("ml", "a", "u1") == Pod("ml", "a", "u1", {"k8s.v1.cni.cncf.io/networks": "rail0"})
    assert cache.nad("ml", "rail0") == {"config": "{}"}
    assert direct.gets == [] and (cache.hits, cache.misses) == (2, 0)


def test_a_miss_falls_back_to_a_get() -> None:
    cache, direct = make()
    direct.pods["ml/new"] = Pod("ml", "new", "u9", {})
    direct.nads["ml/fresh"] = {"config": "{}"}
    assert cache.pod("ml", "new", "u9") == Pod("ml", "new", "u9", {})
    assert cache.nad("ml", "fresh") == {"config": "{}"}
    assert cache.nad("ml", "absent") is None
    assert direct.gets == ["pod ml/new", "nad ml/fresh", "nad ml/absent"] and cache.misses == 3


def test_a_recreated_pod_is_read_again() -> None:
    cache, direct = make()
    cache.pods.replace([pod_obj("a", "old-uid")])
    direct.pods["ml/a"] = Pod("ml", "a", "new-uid", {})
    assert cache.pod("ml", "a", "new-uid") == Pod("ml", "a", "new-uid", {})
    assert cache.pod("ml", "a", "old-uid").uid == "old-uid"  # type: ignore[union-attr]
    assert cache.pod("ml", "a", "old-uid", fresh=True).uid == "new-uid"  # type: ignore[union-attr]
    assert direct.gets == ["pod ml/a", "pod ml/a"]


def test_watch_events_update_and_delete() -> None:
    cache, direct = make()
    cache.pods.replace([pod_obj("a", "u1")])
    cache.pods.on_event("MODIFIED", pod_obj("a", "u1", x="1"))
    cache.pods.on_event("ADDED", pod_obj("b", "u2"))
    assert cache.pod("ml", "a").annotations == {"x": "1"}  # type: ignore[union-attr]
    cache.pods.on_event("DELETED", pod_obj("a", "u1"))
    assert cache.pod("ml", "a") is None and direct.gets == ["pod ml/a"]
    cache.pods.replace([])  # a relist replaces everything
    assert len(cache.pods) == 0
    cache.nads.on_event("ADDED", nad_obj("n", "{}"))
    returned = cache.nad("ml", "n")
    assert returned is not None
    returned["config"] = "changed"  # callers get a copy
    assert cache.nad("ml", "n") == {"config": "{}"}


class FakeApi:
    """List pages and watch streams as the API server sends them: the first watch ends in 410 Gone."""

    def __init__(self) -> None:
        self.lists = [[pod_obj("a", "u1")], [pod_obj("c", "u3")]]  # the second list: after the 410
        self.watches: list[tuple[str, str]] = []
        self.idle = threading.Event()

    def request(self, method: str, path: str) -> tuple[int, Any]:
        items = self.lists.pop(0) if self.lists else [pod_obj("c", "u3")]
        return 200, {"items": items, "metadata": {"resourceVersion": "5" if not self.lists else "1"}}

    def watch(self, path: str, rv: str) -> Any:
        self.watches.append((path, rv))
        if len(self.watches) == 1:
            yield {"type": "ADDED", "object": pod_obj("b", "u2") | {"metadata": {
                **pod_obj("b", "u2")["metadata"], "resourceVersion": "2"}}}
            yield {"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}
            return
        self.idle.set()
        while True:  # a quiet watch: bookmarks until the reflector is stopped
            yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": rv}}}
            time.sleep(0.05)


def test_the_pod_cache_resumes_and_relists_after_410_gone() -> None:
    api = FakeApi()
    cache = MetaCache(api=api, node_name="n1", direct=Direct())  # type: ignore[arg-type]
    pods = cache.reflectors[0]
    pods.start()  # the NAD reflector is left out: this fake serves pods only
    try:
        assert api.idle.wait(5), "the watch did not resume"
        assert pods.gone == 1 and pods.lists == 2
        assert api.watches[0] == ("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", "1")  # from the list's rv
        assert api.watches[1][1] == "5"  # from the relist's rv, not the 410'd one
        assert cache.pod("ml", "c") is not None and cache.pod("ml", "a") is None  # the relist replaced all
        assert cache.pods.get("ml/b") is None
    finally:
        cache.stop()
