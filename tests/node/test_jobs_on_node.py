"""`railnet controller` on the real node: host-network training jobs whose replicas run real programs.

Issue 8, "on the real node": a KubeDL host-network TFJob (PS + 2 workers) runs
``programs/tf_param_exchange.py`` (reads TF_CONFIG, the PS listens on its own host port, the workers
push and pull parameters through the PS's Service, the PS reaches each worker back through the
worker's Service); a Kubeflow PyTorchJob (Master + 2 workers, same annotation) runs
``programs/torch_rendezvous.py`` (a plain TCP all-reduce over MASTER_ADDR/MASTER_PORT/WORLD_SIZE/
RANK). Mid-run one worker is lost; it comes back on a new host port, its Service is retargeted
before the replacement is Ready, the other replicas keep running, the exchange completes and the
job Succeeds.

Real parts: the controller runs as a subprocess with only `deploy/jobs/rbac.yaml` (a ServiceAccount
token), pods are placed by kube-scheduler and run by the real kubelet + containerd, Services are
kube-proxy's iptables rules, names resolve through CoreDNS. The node's host listeners are published
by the node agent's own publisher (`netmanager.host_listeners.ListenerPublisher`), and a host-network
"daemon" pod (not a job replica, its ports not declared) listens on most ports of the job's range,
so the picker has to find the few free ones.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs import api, builder
from jobs.ports import parse_ports
from netmanager.host_listeners import ANNOTATION as HOST_LISTENERS
from netmanager.host_listeners import ListenerPublisher, listening_ports
from railnet.dev import node
from railnet.dev.cluster_demo_jobs import program_template
from scheduler.live.kubeapi import KubeApi, endpoint_from_config
from tests.kube.kubeutil import wait_for
from tests.node import helpers as h
from tests.node.conftest import RealNode

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).resolve().parent / "programs"
DEPLOY = REPO / "deploy"
SA = ("railnet-controller", "kube-system")
ROUNDS, PAUSE = 40, 0.25  # ~10 s of exchange per replica: time to lose one mid-run
JOB_WAIT = 240.0
JSON = dict[str, Any]

DAEMON = """
import socket, sys, time
held = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.bind(("", int(port)))
    s.listen()
    held.append(s)
print("listening on", *sys.argv[1:], flush=True)
time.sleep(1e9)
"""


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the controller, with its own least-privilege identity ------------------------------------------------

class Controller:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, metrics_port: int) -> None:
        self.proc, self.log, self.metrics_port = proc, log, metrics_port

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def controller(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    tmp = tmp_path_factory.mktemp("controller")
    manifests = [str(p) for p in sorted((DEPLOY / "jobs" / "crds").glob("*.yaml"))]
    manifests += [str(DEPLOY / "jobs" / "rbac.yaml")]
    args = [a for m in manifests for a in ("-f", m)]
    proc: subprocess.Popen[bytes] | None = None
    try:
        real_node.kubectl("apply", *args)
        real_node.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[
            f"crd/{Path(m).stem}" for m in manifests if "/crds/" in m])
        token = real_node.core.create_namespaced_service_account_token(*SA, body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}}).status.token
        config = yaml.safe_load(real_node.cluster.kubeconfig.read_text())
        for user in config["users"]:
            user["user"] = {"token": token}
        kubeconfig = tmp / "railnet-controller.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        kubeconfig.chmod(0o600)
        port, log = _free_port(), tmp / "controller.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "railnet.cli", "controller", f"--kubeconfig={kubeconfig}",
                 "--lease-namespace=kube-system", "--lease-name=railnet-controller", "--identity=node-test",
                 "--lease-duration=5", "--renew-deadline=4", "--retry-period=1",
                 f"--metrics-port={port}", "--metrics-addr=127.0.0.1"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        ctl = Controller(proc, log, port)
        lease = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/railnet-controller"
        admin = KubeApi(endpoint_from_config(str(real_node.cluster.kubeconfig)), user_agent="railnet-tests")

        def leading() -> bool:
            assert proc is not None and proc.poll() is None, f"controller exited:\n{ctl.text()[-3000:]}"
            code, obj = admin.request("GET", lease)
            return code == 200 and (obj.get("spec") or {}).get("holderIdentity") == "node-test"

        wait_for(leading, 60, "railnet controller holding its Lease", interval=0.3)
        yield ctl
        # refused nothing (a namespace being deleted refuses everyone: not a matter of RBAC)
        refused = [ln for ln in ctl.text().splitlines()
                   if ("HTTP 403" in ln or "forbidden" in ln.lower()) and "terminat" not in ln.lower()]
        assert not refused, refused[-10:]
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            print("--- railnet controller, last lines:", *(tmp / "controller.log").read_text(
                errors="replace").splitlines()[-40:], sep="\n")
        if real_node.cluster.state():
            real_node.kubectl("-n", "kube-system", "delete", "lease", "railnet-controller", "--ignore-not-found",
                              check=False)
            real_node.kubectl("delete", "--ignore-not-found", "--wait=true", "--timeout=120s", *args, check=False)


@pytest.fixture(scope="module")
def listeners(real_node: RealNode) -> Iterator[None]:
    """What the node agent does with --publish-host-listeners: this machine's TCP listeners -> the Node."""
    publisher = ListenerPublisher(real_node.cluster.kubeconfig, real_node.name, interval=0.5)
    publisher.start()
    try:
        yield
    finally:
        publisher.stop()
        publisher._thread.join(30)  # no patch after the annotation is removed below
        if real_node.cluster.state():
            real_node.core.patch_node(real_node.name, {"metadata": {"annotations": {HOST_LISTENERS: None}}})


# -- what the tests watch ------------------------------------------------------------------------------

class Recorder:
    """Every watch event of the namespace's pods and Services, in order, with its resourceVersion.

    resourceVersions of one API server come from one etcd revision counter, so across kinds they
    order writes: the Service write that retargets a port vs the pod write that makes it Ready."""

    def __init__(self, kubeconfig: Path, ns: str) -> None:
        self.api = KubeApi(endpoint_from_config(str(kubeconfig)), user_agent="railnet-tests")
        self.ns = ns
        self.events: list[tuple[int, str, str, JSON]] = []  # (rv, kind, type, object)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(kind,), daemon=True) for kind in ("pods", "services")]
        self.started = [threading.Event() for _ in self.threads]

    def __enter__(self) -> Recorder:
        for t in self.threads:
            t.start()
        for e in self.started:
            assert e.wait(30), "watch did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def _run(self, kind: str) -> None:
        path = f"/api/v1/namespaces/{self.ns}/{kind}"
        rv = self.api.get(path)["metadata"]["resourceVersion"]
        self.started[0 if kind == "pods" else 1].set()
        while not self.stop.is_set():
            for event in self.api.watch(path, rv, timeout_s=2):
                if event.get("type") in ("BOOKMARK", "ERROR"):
                    rv = (event.get("object") or {}).get("metadata", {}).get("resourceVersion", rv)
                    continue
                obj = event["object"]
                rv = obj["metadata"]["resourceVersion"]
                with self.lock:
                    self.events.append((int(rv), kind, event["type"], obj))

    def of(self, kind: str, name: str) -> list[tuple[int, str, JSON]]:
        with self.lock:
            return [(rv, t, o) for rv, k, t, o in self.events if k == kind and o["metadata"]["name"] == name]


def _ready(pod: JSON) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def _host_port(pod: JSON) -> int:
    [port] = builder.declared_host_ports(pod["spec"])
    return port


def _env(pod: JSON, container: str) -> dict[str, str]:
    c = next(c for c in pod["spec"]["containers"] if c["name"] == container)
    return {e["name"]: e["value"] for e in c.get("env") or [] if "value" in e}


class World:
    """One test's namespace: the job, its pods, logs and the machine."""

    def __init__(self, rn: RealNode, ns: str, ctl: Controller) -> None:
        self.rn, self.ns, self.ctl = rn, ns, ctl
        self.api = KubeApi(endpoint_from_config(str(rn.cluster.kubeconfig)), user_agent="railnet-tests")

    def pods(self) -> dict[str, JSON]:
        return {p["metadata"]["name"]: p for p in self.api.get(f"/api/v1/namespaces/{self.ns}/pods")["items"]}

    def services(self) -> dict[str, JSON]:
        return {s["metadata"]["name"]: s for s in self.api.get(f"/api/v1/namespaces/{self.ns}/services")["items"]}

    def running(self, names: list[str], timeout: float = 180) -> dict[str, JSON]:
        def probe() -> dict[str, JSON] | None:
            pods = self.pods()
            for n in names:
                p = pods.get(n)
                if p and (p.get("status") or {}).get("phase") == "Failed":
                    raise AssertionError(f"{n} failed: {json.dumps(p['status'])[:1500]}\n{self.log(n)}")
            ok = all((pods.get(n, {}).get("status") or {}).get("phase") == "Running" for n in names)
            return pods if ok else None

        return wait_for(probe, timeout, f"pods {names} Running", interval=0.3)

    def log(self, pod: str) -> str:
        code, text = self.api.request("GET", f"/api/v1/namespaces/{self.ns}/pods/{pod}/log")
        return text if code == 200 and isinstance(text, str) else ""

    def wait_log(self, pod: str, needle: str, timeout: float = 120) -> str:
        try:
            return wait_for(lambda: t if needle in (t := self.log(pod)) else None, timeout,
                            f"{needle!r} in {pod}'s log", interval=0.3)
        except AssertionError as exc:
            code, text = self.api.request("GET", f"/api/v1/namespaces/{self.ns}/pods/{pod}/log")
            raise AssertionError(f"{exc}\nlog (HTTP {code}): {str(text)[-2000:]}\n{self.diagnose([])}") from None

    def result(self, pod: str) -> JSON:
        text = self.wait_log(pod, "\nRESULT ", timeout=30)  # a log read through the kubelet can fail once
        line = next(ln for ln in text.splitlines() if ln.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]

    def replaced(self, name: str, old_uid: str, pods: list[str]) -> JSON:
        def probe() -> JSON | None:
            p = self.pods().get(name)
            return p if p and p["metadata"]["uid"] != old_uid else None

        try:
            return wait_for(probe, 120, f"{name} replaced", interval=0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose(pods)}") from None

    def diagnose(self, pods: list[str]) -> str:
        """What a failure message needs: pod phases and exits, events, the controller's warnings, logs."""
        states = {n: ((p.get("status") or {}).get("phase"), p["metadata"]["uid"][:8],
                      [cs.get("state") for cs in (p.get("status") or {}).get("containerStatuses") or []])
                  for n, p in self.pods().items()}
        warnings = [ln for ln in self.ctl.text().splitlines() if '"level": "info"' not in ln][-15:]
        return (f"pods: {json.dumps(states)[:3000]}\nevents: {self.events()[-20:]}\n"
                f"controller: {chr(10).join(warnings)}\n{self._logs(pods)}")

    def job(self, group: str, kind: str, name: str) -> JSON:
        return self.api.get(api.resource_path(group, api.FRAMEWORKS[kind].plural, self.ns, name))  # type: ignore[no-any-return]

    def wait_job(self, group: str, kind: str, name: str, cond: str, pods: list[str]) -> JSON:
        def probe() -> JSON | None:
            job = self.job(group, kind, name)
            conds = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"}
            if "Failed" in conds and cond != "Failed":
                raise AssertionError(f"{kind} {name} failed: {conds['Failed']}\n" + self.diagnose(pods))
            return job if cond in conds else None

        try:
            return wait_for(probe, JOB_WAIT, f"{kind} {name} {cond}", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose(pods)}") from None

    def _logs(self, pods: list[str]) -> str:
        return "\n".join(f"--- {p}:\n{self.log(p)[-1500:]}" for p in pods)

    def events(self) -> list[tuple[str, str]]:
        return [(e["reason"], e["message"]) for e in self.api.get(f"/api/v1/namespaces/{self.ns}/events")["items"]]

    # -- the machine ------------------------------------------------------------------------------------
    def main_pid(self, pod: JSON, container: str) -> int:
        """The host pid of a pod's container process (the container's init), from containerd."""
        lay = self.rn.layout
        [sandbox] = node.crictl(lay, "pods", "--label", f"io.kubernetes.pod.uid={pod['metadata']['uid']}",
                                "-q").stdout.split()
        [cid] = node.crictl(lay, "ps", "--pod", sandbox, "--name", container, "-q").stdout.split()
        pid = int(json.loads(node.crictl(lay, "inspect", cid).stdout)["info"]["pid"])
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()  # kill nothing but that pod's process
        assert f"pod{pod['metadata']['uid']}" in cgroups and cid in cgroups, (pid, cgroups)
        return pid

    def ended(self, rec: Recorder, pod: JSON, pods: list[str]) -> JSON:
        """The last state the watch showed of ``pod`` (this uid) once it is Failed."""
        def probe() -> JSON | None:
            seen = [o for _, _, o in rec.of("pods", pod["metadata"]["name"])
                    if o["metadata"]["uid"] == pod["metadata"]["uid"] and (o.get("status") or {}).get("phase") == "Failed"]
            return seen[-1] if seen else None

        try:
            return wait_for(probe, 60, f"{pod['metadata']['name']} Failed", interval=0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose(pods)}") from None

    def programs(self) -> None:
        data = {p.name: p.read_text() for p in sorted(PROGRAMS.glob("*.py"))}
        self.rn.core.create_namespaced_config_map(self.ns, {"metadata": {"name": "programs"}, "data": data})

    def daemon(self, ports: list[int]) -> None:
        """A host process that holds ``ports`` (a host-network pod that declares none of them), published."""
        self.rn.core.create_namespaced_pod(self.ns, h.pod("daemon", ["python3", "-c", DAEMON, *map(str, ports)],
                                                          host_network=True))
        h.running(self.rn.core, self.ns, "daemon")
        self.wait_log("daemon", "listening on")

        def published() -> set[int] | None:
            ann = self.rn.core.read_node(self.rn.name).metadata.annotations or {}
            held = parse_ports(ann.get(HOST_LISTENERS, ""))
            return held if set(ports) <= held else None

        wait_for(published, 30, f"ports {ports} in the node's {HOST_LISTENERS} annotation", interval=0.3)


def _range(base: int, size: int, free: int) -> tuple[str, list[int], list[int]]:
    """A port range of ``size`` from ``base``: the ``free`` ports nothing listens on, spread out, and the
    rest, for the daemon to hold (ports some other host process holds already are left to it)."""
    busy = listening_ports()
    ports = list(range(base, base + size))
    open_ = [p for p in ports if p not in busy]
    assert len(open_) >= free + 1, f"too many host listeners in {base}-{base + size - 1}: {sorted(busy)}"
    holes = open_[:: max(1, len(open_) // free)][:free]
    return f"{base}-{base + size - 1}", holes, [p for p in open_ if p not in holes]


def _template(container: str, program: str, port_name: str, port: int, selector: dict[str, str]) -> JSON:
    return program_template(container, program, port_name, port, selector, rounds=ROUNDS, pause=PAUSE)


def _ordering(rec: Recorder, name: str, new_uid: str, new_port: int) -> tuple[int, int]:
    """(rv of the Service write that targets new_port, rv of the first write showing the new pod Ready)."""
    svc = next((rv for rv, _, o in rec.of("services", name) if o["spec"]["ports"][0]["targetPort"] == new_port), None)
    ready = next((rv for rv, _, o in rec.of("pods", name) if o["metadata"]["uid"] == new_uid and _ready(o)), None)
    assert svc is not None, f"no Service event targeting {new_port}: {[o['spec'] for _, _, o in rec.of('services', name)]}"
    assert ready is not None, f"the replacement of {name} never showed Ready on the watch"
    return svc, ready


def _not_restarted(before: JSON, after: JSON) -> None:
    name = before["metadata"]["name"]
    assert after["metadata"]["uid"] == before["metadata"]["uid"], f"{name} was recreated"
    for cs in (after.get("status") or {}).get("containerStatuses") or []:
        assert cs["restartCount"] == 0, f"{name}'s {cs['name']} restarted: {cs}"


def _not_yet(w: World, pods: list[str]) -> str:
    """Connections a replica made through a Service before it reached the replica behind it (see the
    programs' banner check): how often, and what answered."""
    lines = [ln for p in pods for ln in w.log(p).splitlines() if " yet (answered " in ln]
    return f"{len(lines)} early connections through a Service" + (f", e.g. {lines[0]!r}" if lines else "")


# -- the tests ---------------------------------------------------------------------------------------

def test_host_network_tfjob_survives_a_killed_worker(real_node: RealNode, ns: str, controller: Controller,
                                                     listeners: None) -> None:
    """KubeDL TFJob, PS + 2 workers, `restartPolicy: ExitCode`: worker 1's process is SIGKILLed from the
    host (as the OOM killer would). Exit 137 is retryable under ExitCode (KubeDL's rule), and the pod's
    restartPolicy is Never, so the pod fails as a whole and the controller replaces it, on a new port
    (under OnFailure the kubelet would restart the container in place, on the same port)."""
    t0 = time.monotonic()
    w = World(real_node, ns, controller)
    w.programs()
    span, holes, held = _range(27300, 16, 5)
    w.daemon(held)
    tmpl = _template("tensorflow", "tf_param_exchange.py", "tfjob-port", 2222,
                     {"kubernetes.io/hostname": real_node.name})  # pinned: the picker knows the node
    replica = {"restartPolicy": "ExitCode", "template": tmpl}
    job = {"apiVersion": f"{api.KUBEDL}/v1alpha1", "kind": "TFJob",
           "metadata": {"name": "tf", "annotations": {api.NETWORK_MODE: "host", api.PORT_RANGE_ANNOTATION: span}},
           "spec": {"cleanPodPolicy": "None", "successPolicy": "AllWorkers",
                    "tfReplicaSpecs": {"PS": {"replicas": 1, **replica}, "Worker": {"replicas": 2, **replica}}}}
    names = ["tf-ps-0", "tf-worker-0", "tf-worker-1"]
    with Recorder(real_node.cluster.kubeconfig, ns) as rec:
        w.api.call("POST", api.resource_path(api.KUBEDL, "tfjobs", ns), job)
        before = w.running(names)
        port = {n: _host_port(before[n]) for n in names}
        assert len(set(port.values())) == 3 and set(port.values()) <= set(holes), (port, holes)
        for n in names:
            assert before[n]["spec"]["hostNetwork"] is True and before[n]["spec"]["nodeName"] == real_node.name
            cfg = json.loads(_env(before[n], "tensorflow")["TF_CONFIG"])
            own = cfg["cluster"][cfg["task"]["type"]][cfg["task"]["index"]]
            assert own == f"{n}.{ns}.svc:{port[n]}", cfg  # its own entry: the real host port
            others = [a for t, addrs in cfg["cluster"].items() for a in addrs if a != own]
            assert all(a.endswith(".svc:2222") for a in others), cfg  # everyone else: the Service's fixed port
        w.wait_log("tf-worker-1", "round 5 pushed")  # mid-run, connected to the PS through its Service
        old = before["tf-worker-1"]
        os.kill(w.main_pid(old, "tensorflow"), signal.SIGKILL)
        [cs] = w.ended(rec, old, names)["status"]["containerStatuses"]
        assert cs["state"]["terminated"]["exitCode"] == 137, cs  # as the kernel killed it
        new = w.replaced("tf-worker-1", old["metadata"]["uid"], names)
        new_port = _host_port(new)
        assert new_port != port["tf-worker-1"] and new_port in holes, (new_port, port, holes)
        assert new_port not in (port["tf-ps-0"], port["tf-worker-0"])
        w.running(["tf-worker-1"])
        w.wait_job(api.KUBEDL, "TFJob", "tf", "Succeeded", names)
        wait_for(lambda: all(p["status"]["phase"] == "Succeeded" for n, p in w.pods().items() if n in names),
                 60, "every replica Succeeded", interval=0.5)
        wait_for(lambda: any(_ready(o) for _, _, o in rec.of("pods", "tf-worker-1")
                             if o["metadata"]["uid"] == new["metadata"]["uid"]), 30, "the watch caught up",
                 interval=0.3)
    # nothing but the killed pod was replaced
    after = w.pods()
    for n in ("tf-ps-0", "tf-worker-0"):
        _not_restarted(before[n], after[n])
    assert after["tf-worker-1"]["status"]["containerStatuses"][0]["restartCount"] == 0
    # the Service moved to the new port before the replacement could be Ready
    svc_rv, ready_rv = _ordering(rec, "tf-worker-1", new["metadata"]["uid"], new_port)
    assert svc_rv < ready_rv, (svc_rv, ready_rv)
    services = w.services()
    for n, p in {**port, "tf-worker-1": new_port}.items():
        [sp] = services[n]["spec"]["ports"]
        assert (sp["port"], sp["targetPort"]) == (2222, p), services[n]["spec"]
    cfg = json.loads(_env(new, "tensorflow")["TF_CONFIG"])
    assert cfg["cluster"]["worker"][1] == f"tf-worker-1.{ns}.svc:{new_port}"
    # the exchange: every round of both workers applied once, the sum right, the replacement resumed
    # mid-run, and the PS reached each worker's current incarnation through its Service
    result = w.result("tf-ps-0")
    assert result["ok"] and result["rounds"] == {"0": list(range(ROUNDS)), "1": list(range(ROUNDS))}, result
    assert result["port"] == port["tf-ps-0"]
    assert result["hellos"] == {"0": 1, "1": 2}, result
    assert result["reached"]["0"]["port"] == port["tf-worker-0"]
    assert result["reached"]["1"]["port"] == new_port, result
    resumed = int(w.log("tf-worker-1").split("resuming at round ")[1].split()[0])
    assert 5 < resumed < ROUNDS, w.log("tf-worker-1")
    status = w.job(api.KUBEDL, "TFJob", "tf")["status"]
    assert status["replicaStatuses"]["Worker"].get("restarts") == 1, status
    reasons = [r for r, _ in w.events()]
    assert "FailOver" in reasons and "ServiceRetargeted" in reasons, reasons
    # host ports: all four distinct, none a port a host process held
    assert len({*port.values(), new_port}) == 4 and not ({*port.values(), new_port} & set(held))
    print(f"TFJob: ports {port} -> worker-1 {new_port}; worker 1 resumed at round {resumed}; "
          f"{time.monotonic() - t0:.1f}s; {_not_yet(w, names)}")


def test_host_network_pytorchjob_survives_a_deleted_worker(real_node: RealNode, ns: str, controller: Controller,
                                                           listeners: None) -> None:
    """Kubeflow PyTorchJob (kubeflow.org/v1, KubeDL's host-network annotation), Master + 2 workers,
    `restartPolicy: OnFailure` (Kubeflow's PyTorch default): worker 1 (rank 2) is lost by deleting its
    pod (a drain or eviction). Under OnFailure a killed process would be restarted in place by the
    kubelet on the same port; a pod that is gone is replaced by the controller, on a new port."""
    t0 = time.monotonic()
    w = World(real_node, ns, controller)
    w.programs()
    span, holes, held = _range(27400, 16, 5)
    w.daemon(held)
    tmpl = _template("pytorch", "torch_rendezvous.py", "pytorchjob-port", 23456,
                     {node.REAL_NODE_LABEL: "true"})  # not pinned by name: the picker does not know the node
    replica = {"restartPolicy": "OnFailure", "template": tmpl}
    job = {"apiVersion": f"{api.KUBEFLOW}/v1", "kind": "PyTorchJob",
           "metadata": {"name": "pt", "annotations": {api.NETWORK_MODE: "host", api.PORT_RANGE_ANNOTATION: span}},
           "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, **replica}, "Worker": {"replicas": 2, **replica}}}}
    names = ["pt-master-0", "pt-worker-0", "pt-worker-1"]
    with Recorder(real_node.cluster.kubeconfig, ns) as rec:
        w.api.call("POST", api.resource_path(api.KUBEFLOW, "pytorchjobs", ns), job)
        before = w.running(names)
        port = {n: _host_port(before[n]) for n in names}
        assert len(set(port.values())) == 3 and set(port.values()) <= set(holes), (port, holes)
        master_env = _env(before["pt-master-0"], "pytorch")
        assert (master_env["MASTER_ADDR"], master_env["MASTER_PORT"]) == ("localhost", str(port["pt-master-0"]))
        for i, n in enumerate(names[1:], start=1):
            env = _env(before[n], "pytorch")
            assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["RANK"], env["WORLD_SIZE"]) == \
                ("pt-master-0", "23456", str(i), "3"), env
        w.wait_log("pt-worker-1", "round 5 sum")  # mid-run, through the master's Service
        old = before["pt-worker-1"]
        real_node.core.delete_namespaced_pod("pt-worker-1", ns)

        new = w.replaced("pt-worker-1", old["metadata"]["uid"], names)
        new_port = _host_port(new)
        assert new_port != port["pt-worker-1"] and new_port in holes, (new_port, port, holes)
        assert new_port not in (port["pt-master-0"], port["pt-worker-0"])
        w.running(["pt-worker-1"])
        w.wait_job(api.KUBEFLOW, "PyTorchJob", "pt", "Succeeded", names)
        wait_for(lambda: all(p["status"]["phase"] == "Succeeded" for n, p in w.pods().items() if n in names),
                 60, "every replica Succeeded", interval=0.5)
        wait_for(lambda: any(_ready(o) for _, _, o in rec.of("pods", "pt-worker-1")
                             if o["metadata"]["uid"] == new["metadata"]["uid"]), 30, "the watch caught up",
                 interval=0.3)
    after = w.pods()
    for n in ("pt-master-0", "pt-worker-0"):
        _not_restarted(before[n], after[n])
    svc_rv, ready_rv = _ordering(rec, "pt-worker-1", new["metadata"]["uid"], new_port)
    assert svc_rv < ready_rv, (svc_rv, ready_rv)
    services = w.services()
    for n, p in {**port, "pt-worker-1": new_port}.items():
        [sp] = services[n]["spec"]["ports"]
        assert (sp["port"], sp["targetPort"]) == (23456, p), services[n]["spec"]
    # the rendezvous: every round holds every rank's value, rank 2 joined twice and resumed mid-run,
    # rank 1 was never restarted and saw every round's sum
    result = w.result("pt-master-0")
    assert result["ok"] and result["complete"] and result["world"] == 3, result
    assert result["hellos"] == {"1": 1, "2": 2} and result["port"] == port["pt-master-0"], result
    resumed = int(w.log("pt-worker-1").split("resuming at round ")[1].split()[0])
    assert 5 < resumed < ROUNDS, w.log("pt-worker-1")
    rank1 = w.log("pt-worker-0")
    assert all(f"round {r} sum " in rank1 for r in range(ROUNDS)) and "pt-master-0:23456" in rank1, rank1
    reasons = [r for r, _ in w.events()]
    assert "ServiceRetargeted" in reasons, reasons
    assert len({*port.values(), new_port}) == 4 and not ({*port.values(), new_port} & set(held))
    print(f"PyTorchJob: ports {port} -> worker-1 {new_port}; rank 2 resumed at round {resumed}; "
          f"{time.monotonic() - t0:.1f}s; {_not_yet(w, names)}")
