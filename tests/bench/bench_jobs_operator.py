"""`railnet controller` against Kubeflow's training operator v1.8.1 on one API server, in one run:
100 PyTorchJobs x 8 replicas (Master 1 + Worker 7, kubeflow.org/v1) created at once; the time from
the first create until all 800 pods exist and until all are Running (kwok marks a pod Running once
kube-scheduler binds it), and each controller's peak RSS and CPU seconds.

    .venv/bin/python tests/bench/bench_jobs_operator.py [--jobs 100] [--replicas 8] [--nodes 8]
        [--repeat 1] [--kind pytorchjob|tfjob] [--workers 8] [--only railnet|operator] [--json]
        [--railnet-arg=--create-parallelism=32 ...] [--timeout 900]

One dev cluster (kube-apiserver, KCM, kube-scheduler, kwok; owned by this process) serves both
controllers, one after the other; `--repeat N` runs N rounds and alternates the order (railnet first
in even rounds, the operator first in odd ones), so neither always gets the warmer or the quieter
slot. Both controllers serve `kubeflow.org/v1` TFJob and PyTorchJob under the same CRD names, each
with its own schema (railnet's permissive one from deploy/jobs/crds/, the operator's structural one
from its module's manifests/base/crds/), so before each turn the bench deletes the other
controller's two kubeflow.org CRDs, waits until they are gone, creates this one's and waits until
the resources are served. Each turn gets a fresh namespace, only one controller runs at a time, and
the previous turn's namespace (jobs, pods, Services, events) is deleted and gone before the next
turn starts, so every turn starts from the same empty nodes.

Settings, the same for both where both have them: 8 reconcile workers (railnet `--workers`, the
operator `--controller-threads`), no gang scheduling (no PodGroups; pods go to kube-scheduler), no
leader election, info-level logs to a file, cluster-wide caches. The operator runs only its TFJob and
PyTorchJob controllers (`--enable-scheme`). Its validating webhook cannot be switched off by a flag:
its cert rotator needs the Secret `training-operator-webhook-cert` in its namespace (created here,
empty; the rotator fills it) and the serving certificate in the hard-coded
/tmp/k8s-webhook-server/serving-certs (copied there from that Secret, as a Secret volume would, and
removed afterwards). No ValidatingWebhookConfiguration is installed, so the API server never calls
the webhook: admission is the same for both. The operator's client is controller-runtime's default
(20 QPS, burst 30); v1.8.1 has no flag to raise it, so it is measured as it ships.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import ctypes
import functools
import http.client
import json
import math
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from railnet.dev import k8sbin, peers  # noqa: E402
from railnet.dev.devcluster import DevCluster, NodeSet, Options, running_cluster  # noqa: E402

JSON = dict[str, Any]
RAILNET, OPERATOR = "railnet", "training-operator"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
KUBEFLOW_CRDS = ("pytorchjobs.kubeflow.org", "tfjobs.kubeflow.org")
OPERATOR_NS = "bench-training-operator-system"
OPERATOR_SECRET = "training-operator-webhook-cert"  # the operator's --webhook-secret-name default
CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # hard-coded in the operator's pkg/cert
KINDS = {  # --kind: plural, kind, replica-spec key, replica types (first one gets 1 replica), container
    "pytorchjob": ("pytorchjobs", "PyTorchJob", "pytorchReplicaSpecs", ("Master", "Worker"), "pytorch"),
    "tfjob": ("tfjobs", "TFJob", "tfReplicaSpecs", ("PS", "Worker"), "tensorflow"),
}


def _say(msg: str) -> None:
    print(msg, flush=True)


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the bench


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------- API client


class Client:
    """Keep-alive HTTPS connections to the admin endpoint, one per thread."""

    def __init__(self, cluster: DevCluster) -> None:
        self.port = int(cluster.state()["ports"]["apiserver"])
        self.ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
        self.ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
        self.local = threading.local()

    def conn(self, timeout: float = 60) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": "railnet-bench"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(3):
            conn = getattr(self.local, "conn", None) or self.conn()
            self.local.conn = conn
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        if resp.status == 429:  # a CRD created moments ago: "storage is (re)initializing"
            time.sleep(0.25)
            return self.request(method, path, body)
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body}")
        return body


def _wait(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


# -------------------------------------------------------------------------------------------- CRDs


def _crd_docs(owner: str) -> list[JSON]:
    if owner == RAILNET:
        files = sorted((REPO / "deploy" / "jobs" / "crds").glob("*.yaml"))
    else:
        files = [peers.training_operator_crd("pytorchjobs"), peers.training_operator_crd("tfjobs")]
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    for doc in docs:  # so that the bench can tell whose CRD is installed
        doc.setdefault("metadata", {}).setdefault("labels", {})["railnet.io/bench-crd-owner"] = owner
    return docs


def install_crds(client: Client, owner: str, log: Callable[[str], None] = _say) -> float:
    """Make `owner`'s kubeflow.org CRDs the installed ones (railnet's KubeDL-group CRDs stay). Seconds taken."""
    t0 = time.monotonic()
    docs = _crd_docs(owner)
    names = {d["metadata"]["name"] for d in docs}
    def answers(path: str, code: int) -> bool:
        return client.request("GET", path)[0] == code

    for name in KUBEFLOW_CRDS:
        status, crd = client.request("GET", f"{CRD_PATH}/{name}")
        if status == 200 and crd["metadata"].get("labels", {}).get("railnet.io/bench-crd-owner") != owner:
            client.request("DELETE", f"{CRD_PATH}/{name}")
            _wait(functools.partial(answers, f"{CRD_PATH}/{name}", 404), 120, f"CRD {name} deleted")
    for doc in docs:
        name = doc["metadata"]["name"]
        status, body = client.request("POST", CRD_PATH, doc)
        if status not in (201, 409):
            raise RuntimeError(f"creating CRD {name}: HTTP {status}: {str(body)[:500]}")

    def established(name: str) -> bool:
        status, crd = client.request("GET", f"{CRD_PATH}/{name}")
        conds = (crd.get("status") or {}).get("conditions") or [] if status == 200 else []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    for name in sorted(names):
        _wait(functools.partial(established, name), 60, f"CRD {name} Established")
        plural, group = name.split(".", 1)
        version = "v1" if group == "kubeflow.org" else "v1alpha1"
        _wait(functools.partial(answers, f"/apis/{group}/{version}/{plural}?limit=1", 200), 60, f"{name} served")
    log(f"    {owner}'s CRDs installed in {time.monotonic() - t0:.1f}s")
    return time.monotonic() - t0


# ---------------------------------------------------------------------------------------- the jobs


def job_manifest(kind: str, name: str, replicas: int) -> JSON:
    plural, kind_name, key, (first, worker), container = KINDS[kind]
    del plural

    def spec(n: int) -> JSON:
        return {"replicas": n, "restartPolicy": "OnFailure", "template": {"spec": {
            "containers": [{"name": container, "image": "registry.k8s.io/pause:3.10"}]}}}

    return {"apiVersion": "kubeflow.org/v1", "kind": kind_name, "metadata": {"name": name},
            "spec": {key: {first: spec(1), worker: spec(replicas - 1)}}}


class PodFollower(threading.Thread):
    """Watches one namespace's pods; timestamps when all `total` exist and when all are Running."""

    def __init__(self, client: Client, namespace: str, total: int) -> None:
        super().__init__(daemon=True)
        self.client, self.ns, self.total = client, namespace, total
        self.created: set[str] = set()
        self.running: set[str] = set()
        self.all_created_at: float | None = None
        self.all_running_at: float | None = None
        self.first_created_at: float | None = None
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # re-raised by wait()
            self.error = exc

    def _follow(self) -> None:
        # Resume from the last resourceVersion when the API server closes a watch; relist after 410.
        path = f"/api/v1/namespaces/{self.ns}/pods"
        rv = ""
        while self.all_running_at is None and not self.stop.is_set():
            conn = self.client.conn(timeout=600)
            try:
                if not rv:
                    conn.request("GET", path)
                    listing = json.loads(conn.getresponse().read())
                    for obj in listing["items"]:
                        self._see(obj)
                    rv = listing["metadata"]["resourceVersion"]
                conn.request("GET", f"{path}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true"
                             "&timeoutSeconds=1800")
                resp = conn.getresponse()
                self.ready.set()
                while self.all_running_at is None and not self.stop.is_set():
                    line = resp.readline()
                    if not line:
                        break
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        rv = "" if event["object"].get("code") == 410 else rv
                        break
                    rv = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._see(event["object"])
            finally:
                conn.close()

    def _see(self, obj: JSON) -> None:
        name, now = obj["metadata"]["name"], time.monotonic()
        if name not in self.created:
            self.created.add(name)
            self.first_created_at = self.first_created_at or now
            if len(self.created) == self.total:
                self.all_created_at = now
        if (obj.get("status") or {}).get("phase") == "Running" and name not in self.running:
            self.running.add(name)
            if len(self.running) == self.total:
                self.all_running_at = now

    def wait(self, deadline: float, proc: subprocess.Popen[bytes]) -> None:
        while self.all_running_at is None and self.error is None and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the controller exited with {proc.returncode} during the run")
            time.sleep(0.1)
        if self.error is not None:
            raise self.error
        if self.all_running_at is None:
            raise TimeoutError(f"{self.ns}: {len(self.created)} pods created, {len(self.running)} Running "
                               f"of {self.total}")


class JobWrites(threading.Thread):
    """Counts MODIFIED events of the namespace's job objects: the controller's status (and spec) writes."""

    def __init__(self, client: Client, path: str) -> None:
        super().__init__(daemon=True)
        self.client, self.path, self.modified = client, path, 0
        self.ready, self.stop = threading.Event(), threading.Event()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # a figure for the report, not a condition of the run
            rv = self.client.get(self.path)["metadata"]["resourceVersion"]
            while not self.stop.is_set():
                conn = self.client.conn(timeout=600)
                try:
                    conn.request("GET", f"{self.path}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true"
                                 "&timeoutSeconds=1800")
                    resp = conn.getresponse()
                    self.ready.set()
                    while not self.stop.is_set():
                        line = resp.readline()
                        if not line:
                            break
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            return
                        rv = event["object"]["metadata"]["resourceVersion"]
                        self.modified += event["type"] == "MODIFIED"
                finally:
                    conn.close()
        self.ready.set()


# -------------------------------------------------------------------------------- process figures


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


class RssSampler(threading.Thread):
    """VmRSS of one process every 0.2 s; the peak is also cross-checked with the kernel's VmHWM."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmRSS"))
            self.stop.wait(0.2)


# ---------------------------------------------------------------------------------- the controllers


@dataclass
class Controller:
    who: str
    proc: subprocess.Popen[bytes]
    log: Path
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    metrics_port: int = 0  # railnet: its Prometheus endpoint

    def metrics(self) -> dict[str, float]:
        """railnet's own counters (sample name with labels -> value); {} for the operator or on error."""
        if not self.metrics_port:
            return {}
        try:
            with contextlib.closing(http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)) as conn:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
        except (OSError, http.client.HTTPException):
            return {}
        return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                if ln.startswith("railnet_jobs_") and " " in ln}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for fn in reversed(self.cleanup):
            with contextlib.suppress(Exception):
                fn()
        self.cleanup.clear()

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join("    " + ln for ln in self.log.read_text(errors="replace").splitlines()[-lines:])
        return "    (no log)"


def start_railnet(cluster: DevCluster, workers: int, logdir: Path, extra: tuple[str, ...] = ()) -> Controller:
    log = logdir / f"railnet-{time.monotonic_ns()}.log"
    port = _free_port()
    argv = [sys.executable, "-m", "railnet.cli", "controller", f"--kubeconfig={cluster.kubeconfig}",
            "--no-leader-elect", f"--workers={workers}", "--no-gang-scheduling", f"--metrics-port={port}",
            "--metrics-addr=127.0.0.1", "--log-level=info", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
    ctl = Controller(RAILNET, proc, log, metrics_port=port)

    def leader() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"railnet controller exited with {proc.returncode}:\n{ctl.tail()}")
        try:
            with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=2)) as conn:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
        except (OSError, http.client.HTTPException):
            return False
        return any(ln.startswith("railnet_jobs_leader ") and float(ln.split()[1]) == 1 for ln in text.splitlines())

    try:
        _wait(leader, 120, "railnet controller caches synced")
    except BaseException:
        ctl.stop()
        raise
    return ctl


def start_operator(client: Client, cluster: DevCluster, workers: int, logdir: Path) -> Controller:
    if CERT_DIR.parent.exists():
        raise RuntimeError(f"{CERT_DIR.parent} exists: another training operator may be running here; "
                           "the bench writes its webhook certificate there and would remove it afterwards")
    log = logdir / f"training-operator-{time.monotonic_ns()}.log"
    secret_path = f"/api/v1/namespaces/{OPERATOR_NS}/secrets/{OPERATOR_SECRET}"
    client.request("POST", "/api/v1/namespaces", {"metadata": {"name": OPERATOR_NS}})
    client.request("DELETE", secret_path)
    status, body = client.request("POST", f"/api/v1/namespaces/{OPERATOR_NS}/secrets",
                                  {"metadata": {"name": OPERATOR_SECRET}, "type": "Opaque"})
    if status != 201:
        raise RuntimeError(f"creating the operator's webhook Secret: HTTP {status}: {body}")
    argv = [str(peers.training_operator_binary()), "--enable-scheme=pytorchjob", "--enable-scheme=tfjob",
            f"--controller-threads={workers}", "--leader-elect=false",
            f"--metrics-bind-address=127.0.0.1:{_free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{_free_port()}", f"--webhook-server-port={_free_port()}",
            "--zap-log-level=info", "--zap-devel=false"]
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), MY_POD_NAMESPACE=OPERATOR_NS)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=logdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, preexec_fn=_die_with_parent)
    ctl = Controller(OPERATOR, proc, log)
    ctl.cleanup.append(lambda: shutil.rmtree(CERT_DIR.parent, ignore_errors=True))

    def drop_secret() -> None:
        client.request("DELETE", secret_path)

    ctl.cleanup.append(drop_secret)
    try:
        def alive() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"the training operator exited with {proc.returncode}:\n{ctl.tail()}")

        def cert() -> JSON | None:
            alive()
            data = (client.get(secret_path).get("data") or {})
            return data if data.get("tls.crt") and data.get("tls.key") else None

        # What the Secret volume of its Deployment would do: the rotator fills the Secret, the files appear.
        data = _wait(cert, 60, "the operator's cert rotator filling its Secret")
        CERT_DIR.mkdir(parents=True)
        for name in ("tls.crt", "tls.key", "ca.crt"):
            if data.get(name):
                (CERT_DIR / name).write_bytes(base64.b64decode(data[name]))

        def workers_started() -> bool:
            alive()
            text = log.read_text(errors="replace")
            return all(any("Starting workers" in ln and f'"{c}"' in ln for ln in text.splitlines())
                       for c in ("pytorchjob-controller", "tfjob-controller"))

        _wait(workers_started, 120, "the training operator's PyTorchJob and TFJob workers")
    except BaseException:
        ctl.stop()
        raise
    return ctl


# ------------------------------------------------------------------------------------------- a turn


@dataclass
class Result:
    who: str
    round: int
    jobs_posted_s: float
    all_created_s: float
    all_running_s: float
    cpu_s: float
    cpu_total_s: float
    peak_rss_mib: float
    hwm_mib: float
    rss_start_mib: float
    rss_end_mib: float
    services: int
    events: int
    job_writes: int
    apiserver_cpu_s: float
    etcd_cpu_s: float
    load_before: str
    load_after: str


def _railnet_counters(own: dict[str, float], workers: int) -> str:
    def get(name: str, **labels: str) -> float:
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        return own.get(key, 0.0)

    n, busy = get("railnet_jobs_reconcile_seconds_count"), get("railnet_jobs_reconcile_seconds_sum")
    conflicts = sum(v for k, v in own.items() if k.startswith("railnet_jobs_create_conflicts_total"))
    return (f"{n:.0f} reconciles ({get('railnet_jobs_reconciles_total', result='error'):.0f} failed), "
            f"{busy:.1f}s in reconcile across {workers} workers ({busy / workers:.1f}s each, mean "
            f"{busy / max(n, 1) * 1000:.0f} ms); created {get('railnet_jobs_creates_total', kind='Pod'):.0f} pods, "
            f"{get('railnet_jobs_creates_total', kind='Service'):.0f} Services, {conflicts:.0f} answered 409; "
            f"expectation waits {get('railnet_jobs_expectations_waits_total'):.0f}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def delete_namespace(client: Client, ns: str, timeout: float = 600) -> float:
    t0 = time.monotonic()
    client.request("DELETE", f"/api/v1/namespaces/{ns}")
    _wait(lambda: client.request("GET", f"/api/v1/namespaces/{ns}")[0] == 404, timeout, f"namespace {ns} gone", 0.5)
    return time.monotonic() - t0


def turn(cluster: DevCluster, client: Client, who: str, rnd: int, args: argparse.Namespace,
         logdir: Path) -> Result:
    total = args.jobs * args.replicas
    plural = KINDS[args.kind][0]
    _say(f"==> round {rnd}: {who} (load average {_load()})")
    install_crds(client, who)
    ns = f"bench-{'rn' if who == RAILNET else 'to'}-{rnd}-{os.getpid()}"
    status, body = client.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    if status != 201:
        raise RuntimeError(f"creating namespace {ns}: HTTP {status}: {body}")
    try:
        _wait(lambda: client.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")[0] == 200, 60,
              f"ServiceAccount default in {ns}")
        if who == RAILNET:
            ctl = start_railnet(cluster, args.workers, logdir, tuple(args.railnet_arg))
        else:
            ctl = start_operator(client, cluster, args.workers, logdir)
        try:
            follower = PodFollower(client, ns, total)
            follower.start()
            follower.ready.wait(30)
            pid = ctl.proc.pid
            rss_start = _status_kib(pid, "VmRSS")  # started, caches synced, no jobs yet
            sampler = RssSampler(pid)
            sampler.start()
            path = f"/apis/kubeflow.org/v1/namespaces/{ns}/{plural}"
            writes = JobWrites(client, path)
            writes.start()
            writes.ready.wait(30)
            procs = cluster.state()["processes"]
            plane = {c: int(procs[c]["pid"]) for c in ("kube-apiserver", "etcd")}

            def post(i: int, dry: bool = False) -> None:
                status, body = client.request("POST", path + ("?dryRun=All" if dry else ""),
                                              job_manifest(args.kind, f"j{i:03d}", args.replicas))
                if status != 201:
                    raise RuntimeError(f"creating job {i}: HTTP {status}: {str(body)[:500]}")

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                # Warm this CRD's create path (schema, storage, admission) and the 8 connections, unstored.
                list(pool.map(lambda i: post(i, dry=True), range(32)))
                load_before, cpu0 = _load(), _cpu_s(pid)
                plane0 = {c: _cpu_s(p) for c, p in plane.items()}
                t0 = time.monotonic()
                list(pool.map(post, range(args.jobs)))
                posted = time.monotonic() - t0
            follower.wait(t0 + args.timeout, ctl.proc)
            cpu = _cpu_s(pid) - cpu0
            cpu_total = _cpu_s(pid)
            plane_cpu = {c: _cpu_s(p) - plane0[c] for c, p in plane.items()}
            own = ctl.metrics()
            writes.stop.set()
            rss_end, hwm = _status_kib(pid, "VmRSS"), _status_kib(pid, "VmHWM")
            sampler.stop.set()
            sampler.join()
            follower.stop.set()
            load_after = _load()
            assert follower.all_created_at is not None and follower.all_running_at is not None
            services = len(client.get(f"/api/v1/namespaces/{ns}/services")["items"])
            events = len(client.get(f"/api/v1/namespaces/{ns}/events")["items"])
        except BaseException:
            _say(f"    {who} failed; the last lines of its log:\n{ctl.tail()}")
            raise
        finally:
            ctl.stop()
        result = Result(who, rnd, round(posted, 2), round(follower.all_created_at - t0, 2),
                        round(follower.all_running_at - t0, 2), round(cpu, 2), round(cpu_total, 2),
                        round(max(sampler.peak_kib, 0) / 1024, 1), round(hwm / 1024, 1), round(rss_start / 1024, 1),
                        round(rss_end / 1024, 1),
                        services, events, writes.modified, round(plane_cpu["kube-apiserver"], 2),
                        round(plane_cpu["etcd"], 2), load_before, load_after)
        if own:  # where railnet's wall time went: its workers' time in reconcile passes
            _say("    railnet metrics: " + _railnet_counters(own, args.workers))
        _say(f"    {who}: jobs posted {result.jobs_posted_s:.1f}s, all {total} pods created "
             f"{result.all_created_s:.1f}s, all Running {result.all_running_s:.1f}s; CPU {result.cpu_s:.1f}s "
             f"(since start {result.cpu_total_s:.1f}s), peak RSS {result.peak_rss_mib:.0f} MiB (VmHWM "
             f"{result.hwm_mib:.0f}, {result.rss_start_mib:.0f} when ready); {services} Services, {events} events, {writes.modified} job writes; "
             f"kube-apiserver CPU {result.apiserver_cpu_s:.1f}s, etcd {result.etcd_cpu_s:.1f}s; "
             f"load {load_before} -> {load_after}")
    finally:
        took = delete_namespace(client, ns)
        _say(f"    namespace {ns} deleted in {took:.1f}s")
    return result


# --------------------------------------------------------------------------------------------- main


def summary(results: list[Result], peer: bool) -> list[str]:
    def med(who: str, attr: str) -> float | None:
        vals: list[float] = sorted(float(getattr(r, attr)) for r in results if r.who == who)
        if not vals:
            return None
        mid = len(vals) // 2
        return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2

    lines = [f"{'figure (median of rounds)':32} {'railnet':>10} {'operator':>10} {'railnet/operator':>17}"]
    for attr, label in (("all_created_s", "all pods created (s)"), ("all_running_s", "all pods Running (s)"),
                        ("cpu_s", "controller CPU in window (s)"), ("peak_rss_mib", "controller peak RSS (MiB)"),
                        ("hwm_mib", "controller VmHWM (MiB)"), ("rss_start_mib", "controller RSS when ready (MiB)"), ("jobs_posted_s", "jobs posted (s)"),
                        ("job_writes", "writes to job objects"), ("apiserver_cpu_s", "kube-apiserver CPU (s)"),
                        ("etcd_cpu_s", "etcd CPU (s)")):
        a, b = med(RAILNET, attr), med(OPERATOR, attr)
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        lines.append(f"{label:32} {'-' if a is None else f'{a:.1f}':>10} {'-' if b is None else f'{b:.1f}':>10} "
                     f"{ratio:>17}")
    if not peer:
        lines.append("(the training operator was not run: see above)")
    return lines


def _revision() -> str:
    """The commit the railnet controller runs from, and whether its code differs from it (a shared tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "jobs", "scheduler", "railnet"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = [ln[3:] for ln in dirty if ln.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--replicas", type=int, default=8, help="per job: 1 Master/PS + (replicas-1) workers")
    p.add_argument("--nodes", type=int, default=8, help="kwok nodes")
    p.add_argument("--repeat", type=int, default=1, help="rounds; the order alternates between rounds")
    p.add_argument("--kind", choices=sorted(KINDS), default="pytorchjob")
    p.add_argument("--workers", type=int, default=8, help="reconcile workers of both controllers")
    p.add_argument("--only", choices=(RAILNET, "operator"), help="run one controller only")
    p.add_argument("--railnet-arg", action="append", default=[], metavar="ARG",
                   help="extra flag for `railnet controller` (repeatable), e.g. --railnet-arg=--create-parallelism=32")
    p.add_argument("--timeout", type=float, default=900, help="seconds per turn until all pods are Running")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.replicas < 2:
        p.error("--replicas must be at least 2 (1 Master/PS + workers)")

    k8sbin.build()
    peer = args.only != RAILNET
    if peer:
        try:
            peers.build_training_operator()
        except k8sbin.BuildError as exc:
            _say(f"==> the training operator {peers.TRAINING_OPERATOR_VERSION} could not be built, so railnet "
                 f"runs alone:\n{exc}")
            peer = False
    who_all = [w for w in (RAILNET, OPERATOR) if (w == RAILNET and args.only != "operator") or (w == OPERATOR and peer)]
    total = args.jobs * args.replicas
    pods_per_node = max(110, math.ceil(total / args.nodes) * 2)
    _say(f"==> bench: {args.jobs} {KINDS[args.kind][1]}s x {args.replicas} replicas = {total} pods on "
         f"{args.nodes} kwok nodes ({pods_per_node} pods each), {args.workers} workers each, rounds {args.repeat}; "
         f"railnet controller vs Kubeflow training operator {peers.TRAINING_OPERATOR_VERSION} "
         f"({'measured' if peer else 'not run'}); {os.cpu_count()} CPUs, load average {_load()}; railnet at "
         f"{_revision()}" + (f"; railnet controller flags added: {' '.join(args.railnet_arg)}" if args.railnet_arg else ""))
    options = Options(kwok_parallelism=16, kwok_log_level="WARN")
    results: list[Result] = []
    logdir = Path(tempfile.mkdtemp(prefix="bench-jobs-operator-"))
    try:
        with running_cluster(f"jobsbench-{os.getpid()}", nodes=NodeSet(count=0), options=options) as cluster:
            cluster.add_nodes(NodeSet(count=args.nodes, prefix="jobs-", capacity={"pods": str(pods_per_node)}))
            client = Client(cluster)
            install_crds(client, RAILNET)  # railnet also watches its KubeDL-group CRDs; they stay
            for rnd in range(args.repeat):
                order = who_all if rnd % 2 == 0 else list(reversed(who_all))
                for who in order:
                    results.append(turn(cluster, client, who, rnd, args, logdir))
            with contextlib.suppress(Exception):
                delete_namespace(client, OPERATOR_NS, 60)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"args": vars(args), "results": [asdict(r) for r in results]}))
    _say("==> results")
    for r in results:
        _say(f"  round {r.round} {r.who:18} created {r.all_created_s:7.1f}s  Running {r.all_running_s:7.1f}s  "
             f"CPU {r.cpu_s:6.1f}s  peak RSS {r.peak_rss_mib:6.0f} MiB  load {r.load_before} -> {r.load_after}")
    for line in summary(results, peer):
        _say("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
