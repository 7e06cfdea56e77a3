"""Shared pieces of the `railnet controller` kube tests (no tests here): the job CRDs, a controller
process per test, job builders, pod-phase driving and a pod watch that counts creations.

kwok moves a scheduled pod to Running (its pod-ready stage) and leaves pods owned by a TFJob or
PyTorchJob Running; tests end them by patching ``status`` (phase, container exit code), which is
what a kubelet reports and what kwok's own stages write.
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs import api
from railnet.dev.devcluster import DevCluster
from scheduler.live.kubeapi import KubeApi, endpoint_from_config
from tests.kube import kubeutil

REPO = Path(__file__).resolve().parents[2]
WAIT = 60.0
JSON = dict[str, Any]


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def replica(container: str, replicas: int = 1, policy: str | None = None, **spec: Any) -> JSON:
    out: JSON = {"replicas": replicas, "template": {"spec": {
        "containers": [{"name": container, "image": "registry.k8s.io/pause:3.10"}], **spec}}}
    if policy:
        out["restartPolicy"] = policy
    return out


def tfjob(name: str, group: str = api.KUBEDL, annotations: dict[str, str] | None = None,
          run: JSON | None = None, **replicas: JSON) -> JSON:
    spec: JSON = {"tfReplicaSpecs": replicas}
    if group == api.KUBEDL:
        spec.update(run or {})
    elif run:
        spec["runPolicy"] = run
    return {"apiVersion": f"{group}/{api.VERSIONS[group]}", "kind": "TFJob",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


class _Api(KubeApi):
    """KubeApi that waits out 429s (a CRD installed moments ago answers "storage is (re)initializing")."""

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        for _ in range(40):
            status, answer = super().request(method, path, body, content_type)
            if status != 429:
                break
            time.sleep(0.25)
        return status, answer


class Jobs:
    """One test's namespace, controller processes and helpers."""

    def __init__(self, cluster: DevCluster, namespace: str, tmp: Path) -> None:
        self.cluster, self.ns, self.tmp = cluster, namespace, tmp
        self.api = _Api(endpoint_from_config(str(cluster.kubeconfig)), user_agent="railnet-tests")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.metrics_ports: dict[int, int] = {}

    # -- controller processes -----------------------------------------------------------------------
    def start(self, *extra: str, kubeconfig: Path | None = None, lease_ns: str | None = None) -> subprocess.Popen[bytes]:
        port = free_port()
        log = self.tmp / f"controller-{len(self.procs)}.log"
        argv = [sys.executable, "-m", "railnet.cli", "controller", f"--kubeconfig={kubeconfig or self.cluster.kubeconfig}",
                f"--lease-namespace={lease_ns or self.ns}", "--lease-name=railnet-controller", "--lease-duration=3",
                "--renew-deadline=2", "--retry-period=0.5", f"--identity=c{len(self.procs)}",
                f"--metrics-port={port}", "--metrics-addr=127.0.0.1", "--log-level=debug", *extra]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        self.metrics_ports[proc.pid] = port
        return proc

    def metric(self, proc: subprocess.Popen[bytes], name: str) -> float:
        """Sum of a metric's samples whose text line starts with ``name`` (labels included in name)."""
        url = f"http://127.0.0.1:{self.metrics_ports[proc.pid]}/metrics"

        def scrape() -> str | None:
            try:
                return str(urllib.request.urlopen(url, timeout=5).read().decode())
            except OSError:  # not listening yet: the process is still starting
                return None

        text = kubeutil.wait_for(scrape, 30, f"metrics of controller {proc.pid}", interval=0.2)
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def log_text(self, proc: subprocess.Popen[bytes]) -> str:
        return Path(proc.log).read_text(errors="replace")  # type: ignore[attr-defined]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            tail = [line for line in self.log_text(proc).splitlines() if '"level": "debug"' not in line][-15:]
            print(f"--- controller {proc.pid} (exit {proc.returncode}), last lines:", *tail, sep="\n")

    # -- objects ------------------------------------------------------------------------------------
    def create(self, job: JSON) -> JSON:
        group = job["apiVersion"].split("/")[0]
        plural = api.FRAMEWORKS[job["kind"]].plural
        status, answer = self.api.request("POST", api.resource_path(group, plural, self.ns), job)
        assert status == 201, answer
        return answer  # type: ignore[no-any-return]

    def job(self, kind: str, name: str, group: str = api.KUBEDL) -> JSON:
        return self.api.get(api.resource_path(group, api.FRAMEWORKS[kind].plural, self.ns, name))  # type: ignore[no-any-return]

    def patch_job(self, kind: str, name: str, patch: JSON, group: str = api.KUBEDL) -> None:
        self.api.call("PATCH", api.resource_path(group, api.FRAMEWORKS[kind].plural, self.ns, name), patch,
                      "application/merge-patch+json")

    def pods(self, prefix: str = "") -> dict[str, JSON]:
        items = self.api.get(f"/api/v1/namespaces/{self.ns}/pods")["items"]
        return {p["metadata"]["name"]: p for p in items if p["metadata"]["name"].startswith(prefix)}

    def services(self, prefix: str = "") -> dict[str, JSON]:
        items = self.api.get(f"/api/v1/namespaces/{self.ns}/services")["items"]
        return {s["metadata"]["name"]: s for s in items if s["metadata"]["name"].startswith(prefix)}

    def condition(self, kind: str, name: str, ctype: str, group: str = api.KUBEDL) -> JSON | None:
        status, job = self.api.request("GET", api.resource_path(group, api.FRAMEWORKS[kind].plural, self.ns, name))
        if status != 200:
            return None
        return next((c for c in (job.get("status") or {}).get("conditions") or []
                     if c["type"] == ctype and c["status"] == "True"), None)

    def wait_condition(self, kind: str, name: str, ctype: str, group: str = api.KUBEDL,
                       timeout: float = WAIT) -> JSON:
        return kubeutil.wait_for(lambda: self.condition(kind, name, ctype, group), timeout,
                                 f"{kind} {name} condition {ctype}", interval=0.3)

    def wait_running(self, names: set[str], timeout: float = WAIT) -> dict[str, JSON]:
        def probe() -> dict[str, JSON] | None:
            pods = self.pods()
            ok = all((pods.get(n, {}).get("status") or {}).get("phase") == "Running"
                     and not pods[n]["metadata"].get("deletionTimestamp") for n in names)
            return pods if ok else None

        return kubeutil.wait_for(probe, timeout, f"pods {sorted(names)} Running", interval=0.3)

    def wait_replaced(self, name: str, old_uid: str, timeout: float = WAIT) -> dict[str, JSON]:
        """All pods, once ``name`` is Running as a pod other than ``old_uid``."""
        def probe() -> dict[str, JSON] | None:
            pods = self.pods()
            pod = pods.get(name) or {"metadata": {}}
            ok = pod["metadata"].get("uid") not in (None, old_uid) and not pod["metadata"].get("deletionTimestamp") \
                and (pod.get("status") or {}).get("phase") == "Running"
            return pods if ok else None

        return kubeutil.wait_for(probe, timeout, f"{name} recreated and Running", interval=0.3)

    def end_pod(self, name: str, phase: str, exit_code: int = 0, container: str = "tensorflow",
                reason: str = "", restarts: int = 0) -> None:
        """Finish a pod as a kubelet would report it: phase plus the main container's exit."""
        pod = self.api.get(f"/api/v1/namespaces/{self.ns}/pods/{name}")
        statuses = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": restarts,
                     "state": {"terminated": {"exitCode": exit_code if c["name"] == container else 0,
                                              "reason": reason or ("Completed" if exit_code == 0 else "Error")}}}
                    for c in pod["spec"]["containers"]]
        body: JSON = {"status": {"phase": phase, "containerStatuses": statuses}}
        if reason in ("Evicted",):
            body["status"]["reason"] = reason
        self.api.call("PATCH", f"/api/v1/namespaces/{self.ns}/pods/{name}/status", body,
                      "application/merge-patch+json")

    def restart_counts(self, name: str, container: str, count: int) -> None:
        pod = self.api.get(f"/api/v1/namespaces/{self.ns}/pods/{name}")
        statuses = pod["status"].get("containerStatuses") or []
        for cs in statuses:
            if cs["name"] == container:
                cs["restartCount"] = count
        self.api.call("PATCH", f"/api/v1/namespaces/{self.ns}/pods/{name}/status",
                      {"status": {"containerStatuses": statuses}}, "application/merge-patch+json")


class PodWatch(threading.Thread):
    """Counts ADDED events per pod name in the namespace (one per pod ever created)."""

    def __init__(self, jobs: Jobs, kind: str = "pods") -> None:
        super().__init__(daemon=True)
        self.jobs, self.kind = jobs, kind
        self.added: Counter[str] = Counter()
        self.uids: dict[str, set[str]] = {}
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        path = f"/api/v1/namespaces/{self.jobs.ns}/{self.kind}"
        rv = self.jobs.api.get(path)["metadata"]["resourceVersion"]
        self.ready.set()
        while not self.stop.is_set():
            for event in self.jobs.api.watch(path, rv, timeout_s=30):
                obj = event.get("object") or {}
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if event.get("type") == "ADDED":
                    name = obj["metadata"]["name"]
                    self.added[name] += 1
                    self.uids.setdefault(name, set()).add(obj["metadata"]["uid"])
                if self.stop.is_set():
                    return


@pytest.fixture(scope="session")
def job_crds(dyn: Any) -> None:
    docs = kubeutil.load(sorted((kubeutil.DEPLOY / "jobs" / "crds").glob("*.yaml")))
    docs += kubeutil.load([kubeutil.DEPLOY / "scheduler" / "crds" / "podgroups.scheduling.x-k8s.io.yaml"])
    kubeutil.apply(dyn, docs)


@pytest.fixture
def jobs(cluster: DevCluster, namespace: str, job_crds: None, tmp_path: Path) -> Iterator[Jobs]:
    world = Jobs(cluster, namespace, tmp_path)
    try:
        yield world
    finally:
        world.close()


def tf_config(pod: JSON) -> JSON:
    for c in pod["spec"]["containers"]:
        for e in c.get("env") or []:
            if e["name"] == "TF_CONFIG":
                return json.loads(e["value"])  # type: ignore[no-any-return]
    raise AssertionError(f"no TF_CONFIG in {pod['metadata']['name']}")
