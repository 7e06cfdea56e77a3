"""Watch-fed caches of jobs, pods and Services, indexed by the owning job, plus host-port holders.

The reflectors (scheduler/live/reflector.py) call ``replace_*`` after a list and ``on_*`` for each
watch event. Every change to a job, or to a pod/Service it controls, enqueues that job; every pod
or Service seen satisfies the matching expectation. Pods of *all* namespaces are indexed by the
host ports they declare, which is what the port picker avoids.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from jobs import builder, ports
from jobs.api import FRAMEWORKS, job_key
from jobs.expectations import Expectations

JSON = dict[str, Any]
HOST_LISTENERS = "railnet.io/host-listeners"  # on a Node: ports host processes listen on ("22,2379-2380")


def _ns_name(obj: JSON) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _controller_uid(obj: JSON) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") in FRAMEWORKS:
            return str(ref["uid"])
    return None


def _live(pod: JSON) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


class Store:
    def __init__(self, enqueue: Callable[[str], None], expectations: Expectations) -> None:
        self.enqueue, self.expectations = enqueue, expectations
        self.lock = threading.RLock()
        self.jobs: dict[str, JSON] = {}  # job key -> object
        self.job_by_uid: dict[str, str] = {}
        self.pods: dict[str, JSON] = {}  # ns/name -> pod
        self.services: dict[str, JSON] = {}
        self.owned_pods: dict[str, dict[str, JSON]] = {}  # job uid -> {name: pod}
        self.owned_services: dict[str, dict[str, JSON]] = {}
        self.port_holders: Counter[int] = Counter()  # host port -> live pods declaring it
        self.node_ports: dict[str, Counter[int]] = {}  # node -> host port -> live pods
        self.listeners: dict[str, set[int]] = {}  # node -> ports its host processes listen on

    # -- jobs ---------------------------------------------------------------------------------------------
    @staticmethod
    def key_of(obj: JSON) -> str:
        group = obj["apiVersion"].split("/")[0]
        return job_key(group, obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])

    def replace_jobs(self, kind_group: str, items: list[JSON]) -> None:
        """A relist of one job resource; ``kind_group`` = "TFJob.kubeflow.org" etc."""
        with self.lock:
            for key in [k for k in self.jobs if k.startswith(kind_group + "/")]:
                self._drop_job(key)
            for obj in items:
                obj.setdefault("apiVersion", f"{kind_group.split('.', 1)[1]}/x")
                obj.setdefault("kind", kind_group.split(".", 1)[0])
                self._put_job(obj)
        for obj in items:
            self.enqueue(self.key_of(obj))

    def on_job(self, event: str, obj: JSON) -> None:
        key = self.key_of(obj)
        with self.lock:
            if event == "DELETED":
                self._drop_job(key)
            else:
                self._put_job(obj)
        if event == "DELETED":
            self.expectations.delete(key)
        self.enqueue(key)

    def _put_job(self, obj: JSON) -> None:
        key = self.key_of(obj)
        self.jobs[key] = obj
        self.job_by_uid[obj["metadata"]["uid"]] = key

    def _drop_job(self, key: str) -> None:
        obj = self.jobs.pop(key, None)
        if obj is not None:
            self.job_by_uid.pop(obj["metadata"]["uid"], None)

    # -- pods and services ------------------------------------------------------------------------------
    def replace_pods(self, items: list[JSON]) -> None:
        with self.lock:
            self.pods.clear()
            self.owned_pods.clear()
            self.port_holders.clear()
            self.node_ports.clear()
            for pod in items:
                self._put_pod(pod)
            keys = set(self.jobs)
        for key in keys:
            self.enqueue(key)

    def on_pod(self, event: str, pod: JSON) -> None:
        with self.lock:
            self._drop_pod(_ns_name(pod))
            if event != "DELETED":
                self._put_pod(pod)
            owner = self.job_by_uid.get(_controller_uid(pod) or "")
        if owner:
            if event == "DELETED":
                self.expectations.observe(owner, "del:" + pod["metadata"]["uid"])
            else:
                self.expectations.observe(owner, "add:Pod/" + _ns_name(pod))
            self.enqueue(owner)

    def _put_pod(self, pod: JSON) -> None:
        key = _ns_name(pod)
        self.pods[key] = pod
        uid = _controller_uid(pod)
        if uid:
            self.owned_pods.setdefault(uid, {})[pod["metadata"]["name"]] = pod
        if _live(pod):
            node = pod["spec"].get("nodeName") or ""
            for port in builder.declared_host_ports(pod["spec"]):
                self.port_holders[port] += 1
                if node:
                    self.node_ports.setdefault(node, Counter())[port] += 1

    def _drop_pod(self, key: str) -> None:
        pod = self.pods.pop(key, None)
        if pod is None:
            return
        uid = _controller_uid(pod)
        if uid:
            owned = self.owned_pods.get(uid, {})
            owned.pop(pod["metadata"]["name"], None)
            if not owned:
                self.owned_pods.pop(uid, None)
        if _live(pod):
            node = pod["spec"].get("nodeName") or ""
            for port in builder.declared_host_ports(pod["spec"]):
                self.port_holders[port] -= 1
                if self.port_holders[port] <= 0:
                    del self.port_holders[port]
                if node and node in self.node_ports:
                    self.node_ports[node][port] -= 1
                    if self.node_ports[node][port] <= 0:
                        del self.node_ports[node][port]

    def replace_services(self, items: list[JSON]) -> None:
        with self.lock:
            self.services.clear()
            self.owned_services.clear()
            for svc in items:
                self._put_service(svc)
            keys = set(self.jobs)
        for key in keys:
            self.enqueue(key)

    def on_service(self, event: str, svc: JSON) -> None:
        with self.lock:
            old = self.services.pop(_ns_name(svc), None)
            if old is not None:
                self.owned_services.get(_controller_uid(old) or "", {}).pop(old["metadata"]["name"], None)
            if event != "DELETED":
                self._put_service(svc)
            owner = self.job_by_uid.get(_controller_uid(svc) or "")
        if owner:
            if event == "DELETED":
                self.expectations.observe(owner, "del:" + svc["metadata"]["uid"])
            else:
                self.expectations.observe(owner, "add:Service/" + _ns_name(svc))
            self.enqueue(owner)

    def _put_service(self, svc: JSON) -> None:
        self.services[_ns_name(svc)] = svc
        uid = _controller_uid(svc)
        if uid:
            self.owned_services.setdefault(uid, {})[svc["metadata"]["name"]] = svc

    # -- nodes: host listeners -----------------------------------------------------------------------
    def replace_nodes(self, items: list[JSON]) -> None:
        with self.lock:
            self.listeners.clear()
            for node in items:
                self._put_node(node)

    def on_node(self, event: str, node: JSON) -> None:
        with self.lock:
            self.listeners.pop(node["metadata"]["name"], None)
            if event != "DELETED":
                self._put_node(node)

    def _put_node(self, node: JSON) -> None:
        text = (node["metadata"].get("annotations") or {}).get(HOST_LISTENERS)
        if not text:
            return
        try:
            self.listeners[node["metadata"]["name"]] = ports.parse_ports(text)
        except ValueError:
            return  # an unreadable annotation protects nothing; the agent owns its format

    # -- reads (copies, so a reconcile never sees a half-applied event) ----------------------------------
    def snapshot(self, key: str) -> tuple[JSON | None, dict[str, JSON], dict[str, JSON]]:
        with self.lock:
            job = self.jobs.get(key)
            if job is None:
                return None, {}, {}
            uid = job["metadata"]["uid"]
            return job, dict(self.owned_pods.get(uid, {})), dict(self.owned_services.get(uid, {}))
