"""A real, local Kubernetes control plane for development and tests: `railnet dev-cluster up|down|status`.

`up` starts etcd, kube-apiserver (TLS, self-made PKI, admin kubeconfig, service-account keys),
kube-controller-manager, kube-scheduler and kwok (simulated nodes whose pods reach Running), all on
127.0.0.1 with free ports, from the binaries `railnet.dev.k8sbin` builds. The processes outlive `up`;
their pids, ports and start times are recorded in the cluster's state directory so that `down` (or the
next `up`) can stop exactly them.

    python -m railnet.dev.devcluster up [--name N] [--nodes 3] [--label k=v] [--capacity nvidia.com/gpu=8]
                                        [--real-node]   # + this machine as a node (railnet.dev.node)
    python -m railnet.dev.devcluster status [--name N]
    python -m railnet.dev.devcluster down [--name N]

State: $RAILNET_DEV_CLUSTER_HOME/<name> (default ~/.cache/railnet/dev-cluster/<name>); `--state-dir`
picks an exact directory. Test fixtures start clusters with `owner=True`: their processes get
PR_SET_PDEATHSIG(SIGKILL), so they die with the test run even when it is killed, and the next `up`
removes what such a dead run left on disk.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import ctypes
import datetime
import functools
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from railnet.dev import images, k8sbin, node

ENV_HOME: Final = "RAILNET_DEV_CLUSTER_HOME"
DEFAULT_NAME: Final = "railnet"
COMPONENTS: Final = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
KWOK_ANNOTATION: Final = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR: Final = "10.96.0.0/16"
POD_CIDR: Final = ipaddress.ip_network("10.64.0.0/10")  # one /24 per node: room for 16k nodes
NODE_IP_BASE: Final = ipaddress.ip_address("10.128.0.1")
DEFAULT_CAPACITY: Final = {
    "cpu": "64",
    "memory": "512Gi",
    "pods": "110",
    "ephemeral-storage": "1Ti",
    "nvidia.com/gpu": "8",
    "rdma/roce": "8",
}
DEFAULT_LABELS: Final = {"type": "kwok", "railnet.io/simulated": "true"}

Log = Callable[[str], None]


class DevClusterError(RuntimeError):
    """The cluster could not be started or inspected; the message says why."""


def _quiet(_: str) -> None:
    pass


def _say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------ paths


def home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "railnet" / "dev-cluster"


# -------------------------------------------------------------------------------------------- PKI


def _write_pki(pki: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters), service-account key pair."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise DevClusterError(
            "the dev cluster makes its certificates with the `cryptography` package, which is not "
            "installed: pip install 'cryptography>=42' (part of railnet's dev and kube extras)"
        ) from None

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=30)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())  # P-256: fast to make, accepted everywhere

    def save_key(k: ec.EllipticCurvePrivateKey, name: str) -> None:
        pem = k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (pki / name).write_bytes(pem)
        (pki / name).chmod(0o600)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca_name = name("railnet-dev-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    save_key(ca_key, "ca.key")

    def leaf(fname: str, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> None:
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (pki / f"{fname}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        save_key(k, f"{fname}.key")

    service_ip = ipaddress.ip_address(int(ipaddress.ip_network(SERVICE_CIDR).network_address) + 1)
    leaf(
        "apiserver",
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(service_ip),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
        ],
    )
    leaf("admin", name("railnet-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, [])
    sa = key()
    save_key(sa, "sa.key")
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _kubeconfig(server: str, pki: Path, name: str) -> str:
    def b64(fname: str) -> str:
        return base64.b64encode((pki / fname).read_bytes()).decode()

    ctx = f"railnet-{name}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": ctx, "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [
            {
                "name": f"{ctx}-admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [{"name": ctx, "context": {"cluster": ctx, "user": f"{ctx}-admin"}}],
        "current-context": ctx,
    }
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML: no yaml dependency needed


# ------------------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, a unique identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited: it only waits to be reaped
        return None
    return int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    return start is not None and _start_time(pid) == start


_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _stop_pids(procs: Mapping[str, Mapping[str, Any]], timeout: float = 10.0) -> list[str]:
    """Stop the recorded processes one after the other, in the given order: SIGTERM, then SIGKILL.

    One at a time, because kube-apiserver's graceful shutdown talks to etcd: stopping both at once
    makes it hang until the timeout. A pid only counts while its start time is the recorded one.
    """
    stopped = []
    for name, p in procs.items():
        pid, start = int(p["pid"]), p.get("start")
        if not _alive(pid, start):
            continue
        stopped.append(name)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 30.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)  # the whole group: start_new_session made pid its leader
            deadline = time.monotonic() + wait
            while _alive(pid, start) and time.monotonic() < deadline:
                _reap_children()
                time.sleep(0.02)
            if not _alive(pid, start):
                break
    _reap_children()
    return stopped


def _reap_children() -> None:
    # Processes this interpreter started become zombies on exit until waited for.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# ------------------------------------------------------------------------------------------ API


class Api:
    """A minimal client for the admin endpoint (urllib + client cert): fast to import, no deps."""

    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self._ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def ok(self, path: str) -> bool:
        """True if GET path answers 200; False on any error (for readiness probes)."""
        try:
            return self.request("GET", path, timeout=2)[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise DevClusterError(f"GET {path}: HTTP {status}: {body}")
        return body


def _http_ok(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _insecure_ctx() -> ssl.SSLContext:
    # KCM and kube-scheduler serve /healthz with a self-signed cert generated in memory.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ----------------------------------------------------------------------------------------- nodes


@dataclass
class NodeSet:
    """`count` simulated nodes named `<prefix><index>`; `{i}` in a label value is the node index."""

    count: int = 3
    prefix: str = "kwok-node-"
    start: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    capacity: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.start, self.start + self.count)]

    def manifest(self, i: int) -> dict[str, Any]:
        name = f"{self.prefix}{i}"
        capacity = {**DEFAULT_CAPACITY, **self.capacity}
        labels = {
            **DEFAULT_LABELS,
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **{k: v.format(i=i) for k, v in self.labels.items()},
        }
        # A distinct InternalIP and podCIDR per node: hostNetwork pods get the node IP, others an
        # address from the node's podCIDR, so EndpointSlices look like a real cluster's.
        node_ip = str(NODE_IP_BASE + i)
        pod_cidr = str(ipaddress.ip_network((int(POD_CIDR.network_address) + 256 * i, 24))) if i < 16384 else None
        spec: dict[str, Any] = {"taints": self.taints} if self.taints else {}
        if pod_cidr:
            spec.update(podCIDR=pod_cidr, podCIDRs=[pod_cidr])
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": spec,
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": name}],
            },
        }


def _node_ready(node: Mapping[str, Any]) -> bool:
    conds = node.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
    blocking = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
    tainted = any(t.get("key") in blocking for t in node.get("spec", {}).get("taints") or [])
    return ready and not tainted


# --------------------------------------------------------------------------------------- cluster


@dataclass
class Options:
    node_lease_seconds: int = 40  # kwok renews every lease/4; the bench raises it for 1,000 nodes
    kwok_parallelism: int = 8
    kwok_log_level: str = "INFO"  # kwok logs every node/pod patch at INFO; benchmarks use WARN
    scheduler_qps: int = 5000
    extra_apiserver_args: list[str] = field(default_factory=list)


class DevCluster:
    """One named local cluster. `up()` and `down()` are idempotent."""

    def __init__(self, name: str = DEFAULT_NAME, state_dir: Path | None = None, owner: bool = False) -> None:
        self.name = name
        self.dir = (state_dir or home() / name).expanduser().resolve()
        self.owner = owner
        self._popen: dict[str, subprocess.Popen[bytes]] = {}

    # -- paths and state
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    def _state_path(self) -> Path:
        return self.dir / "state.json"

    def state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, state: Mapping[str, Any]) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self._state_path())

    def api(self) -> Api:
        state = self.state()
        if not state.get("server"):
            raise DevClusterError(f"cluster {self.name!r} is not up (no state in {self.dir})")
        return Api(state["server"], self.pki)

    def running(self) -> dict[str, bool]:
        procs = self.state().get("processes", {})
        return {n: _alive(int(p["pid"]), p.get("start")) for n, p in procs.items()}

    # -- up
    def up(self, nodes: NodeSet | None = None, options: Options | None = None, log: Log = _say,
           timeout: float = 60.0, real_node: bool = False, node_timeout: float = 240.0) -> Path:
        """Start the cluster (reaping a stale one first) and return the kubeconfig path.

        `real_node`: also run this machine as a node (containerd + kubelet, railnet.dev.node).
        """
        nodes = nodes if nodes is not None else NodeSet()
        options = options or Options()
        reap_orphans(log)
        state = self.state()
        wanted = set(COMPONENTS) | (set(node.NODE_PROCESSES) if real_node else set())
        if state and all(self.running().values()) and set(self.running()) == wanted:
            log(f"==> cluster {self.name!r} is already up")
            return self.kubeconfig
        if self.dir.exists():
            log(f"==> reaping stale cluster state in {self.dir}")
            self.down(log=_quiet)

        missing = k8sbin.missing()
        if missing:
            log(f"==> control-plane binaries missing ({', '.join(missing)}); building them")
            k8sbin.build(log=log)
        bins = k8sbin.bin_dir()
        if real_node:
            images.build_all(log)  # cached; the first build (minutes) must not eat the start-up deadline

        started = time.monotonic()
        try:
            self._start(bins, nodes, options, log, started + timeout)
            if real_node:
                node.start(self, self.state(), log, time.monotonic() + node_timeout)
        except BaseException:
            self.down(log=_quiet)
            raise
        log(f"==> cluster {self.name!r} up in {time.monotonic() - started:.1f}s")
        log(f"    export KUBECONFIG={self.kubeconfig}")
        return self.kubeconfig

    def _start(self, bins: Path, nodes: NodeSet, opt: Options, log: Log, deadline: float) -> None:
        d = self.dir
        (d / "logs").mkdir(parents=True)
        ports = {k: _free_port() for k in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")}
        server = f"https://127.0.0.1:{ports['apiserver']}"
        state: dict[str, Any] = {
            "name": self.name,
            "dir": str(d),
            "ports": ports,
            "server": server,
            "kubeconfig": str(self.kubeconfig),
            "binaries": str(bins),
            "processes": {},
            "created": time.time(),
        }
        if self.owner:
            state["owner"] = {"pid": os.getpid(), "start": _start_time(os.getpid())}
        self._save(state)

        _write_pki(self.pki)
        self.kubeconfig.write_text(_kubeconfig(server, self.pki, self.name))
        self.kubeconfig.chmod(0o600)
        p, kc = self.pki, str(self.kubeconfig)

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        self._spawn(state, "etcd", [
            str(bins / "etcd"), f"--name={self.name}", f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={self.name}={peer_url}", "--unsafe-no-fsync",
            "--quota-backend-bytes=8589934592", "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=5m", "--log-level=warn",
        ])
        self._wait(state, "etcd", lambda: _http_ok(f"{etcd_url}/health"), deadline)

        self._spawn(state, "kube-apiserver", [
            str(bins / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
            f"--cert-dir={p}", f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}", f"--client-ca-file={p / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}", f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # As a kubeadm cluster: kubelets are limited to their own node's objects.
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--endpoint-reconciler-type=none", "--profiling=false",
            # A test cluster must not throttle its own clients (the benchmark creates pods in bulk).
            "--enable-priority-and-fairness=false", "--max-requests-inflight=0",
            "--max-mutating-requests-inflight=0", "--event-ttl=10m",
            # Without a requestheader CA, KCM and the scheduler log an error on every auth config sync.
            f"--requestheader-client-ca-file={p / 'ca.crt'}", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            # For logs/exec/port-forward on the real node: kubelet trusts certs of the cluster's CA.
            f"--kubelet-client-certificate={p / 'admin.crt'}", f"--kubelet-client-key={p / 'admin.key'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname", *opt.extra_apiserver_args,
        ])
        api = Api(server, p)
        self._wait(state, "kube-apiserver", functools.partial(api.ok, "/readyz"), deadline)

        common = [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                  "--bind-address=127.0.0.1", "--leader-elect=false"]
        self._spawn(state, "kube-controller-manager", [
            str(bins / "kube-controller-manager"), *common, f"--secure-port={ports['kcm']}",
            f"--service-account-private-key-file={p / 'sa.key'}", f"--root-ca-file={p / 'ca.crt'}",
            "--use-service-account-credentials=false",
            f"--node-monitor-grace-period={max(50, 3 * opt.node_lease_seconds)}s",
            "--kube-api-qps=1000", "--kube-api-burst=2000", "--concurrent-gc-syncs=50",
        ])
        (d / "scheduler.yaml").write_text(json.dumps({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            # Client QPS defaults (50/100) would cap binding throughput, not the scheduler.
            "clientConnection": {"kubeconfig": kc, "qps": opt.scheduler_qps, "burst": opt.scheduler_qps},
            "leaderElection": {"leaderElect": False},
        }, indent=2))
        self._spawn(state, "kube-scheduler", [
            str(bins / "kube-scheduler"), f"--config={d / 'scheduler.yaml'}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
        ])
        (d / "kwok.yaml").write_text(_kwok_config(bins, opt))
        self._spawn(state, "kwok", [
            str(bins / "kwok"), f"--kubeconfig={kc}", f"--config={d / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}",
            f"--node-lease-duration-seconds={opt.node_lease_seconds}", f"--cidr={POD_CIDR}",
            f"--server-address=127.0.0.1:{ports['kwok']}", f"--v={opt.kwok_log_level}",
        ])
        insecure = _insecure_ctx()
        for comp, port in (("kube-controller-manager", ports["kcm"]), ("kube-scheduler", ports["scheduler"])):
            self._wait(state, comp, functools.partial(_http_ok, f"https://127.0.0.1:{port}/healthz", insecure),
                       deadline)
        # Pods cannot be created before the service-account controller made the "default" SA.
        self._wait(state, "kube-controller-manager",
                   functools.partial(api.ok, "/api/v1/namespaces/default/serviceaccounts/default"), deadline)
        if nodes.count:
            self.add_nodes(nodes, deadline=deadline, log=log)

    def _spawn(self, state: dict[str, Any], comp: str, argv: list[str],
               env: Mapping[str, str] | None = None) -> None:
        logf = (self.dir / "logs" / f"{comp}.log").open("ab")
        preexec = _die_with_parent(os.getpid()) if self.owner else None
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=self.dir, env=env,
            start_new_session=True,  # own process group: `down` signals it as a whole
            preexec_fn=preexec,
        )
        logf.close()
        self._popen[comp] = proc
        state["processes"][comp] = {"pid": proc.pid, "start": _start_time(proc.pid), "argv": argv}
        self._save(state)  # recorded at once, so a crash in the middle of `up` can still be reaped

    def _wait(self, state: Mapping[str, Any], comp: str, ready: Callable[[], bool], deadline: float) -> None:
        proc = state["processes"][comp]
        while True:
            if not _alive(int(proc["pid"]), proc.get("start")):
                raise DevClusterError(f"{comp} exited during start-up:\n{self.log_tail(comp)}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise DevClusterError(f"{comp} not ready in time:\n{self.log_tail(comp)}")
            time.sleep(0.1)

    def log_tail(self, comp: str, lines: int = 25) -> str:
        try:
            text = (self.dir / "logs" / f"{comp}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + ln for ln in text.splitlines()[-lines:])

    # -- nodes
    def add_nodes(self, nodes: NodeSet, deadline: float | None = None, log: Log = _say,
                  wait: bool = True) -> list[str]:
        """Create kwok-managed nodes and wait until every one is Ready and untainted."""
        api = self.api()
        t0 = time.monotonic()
        deadline = deadline or t0 + max(60.0, nodes.count * 0.2)

        def create(i: int) -> None:
            status, body = api.request("POST", "/api/v1/nodes", nodes.manifest(i))
            if status not in (201, 409):
                raise DevClusterError(f"creating node {nodes.prefix}{i}: HTTP {status}: {body}")

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(create, range(nodes.start, nodes.start + nodes.count)))
        names = set(nodes.names())
        if wait:
            while True:
                listing = api.get("/api/v1/nodes?labelSelector=railnet.io%2Fsimulated%3Dtrue")
                ready = {n["metadata"]["name"] for n in listing["items"] if _node_ready(n)}
                if names <= ready:
                    break
                if time.monotonic() > deadline:
                    raise DevClusterError(
                        f"{len(names - ready)} of {len(names)} kwok nodes not Ready in time:\n{self.log_tail('kwok')}"
                    )
                time.sleep(0.2)
        log(f"    {len(names)} kwok nodes ready in {time.monotonic() - t0:.1f}s")
        return sorted(names)

    # -- down / status
    def down(self, log: Log = _say) -> bool:
        """Stop every recorded process and remove the state directory. True if there was something."""
        if not self.dir.exists():
            log(f"==> cluster {self.name!r} is not running ({self.dir} does not exist)")
            return False
        procs = self.state().get("processes", {})
        left: list[str] = []
        if (self.dir / "node").exists():  # the real node first: its pods' CNI DEL needs containerd
            left = node.teardown(node.Layout(self.dir, self.name), procs, log)
        # Stop the clients before the servers so they do not log a storm of connection errors.
        order = {n: procs[n] for n in [*reversed(node.NODE_PROCESSES), *reversed(COMPONENTS)] if n in procs}
        stopped = _stop_pids(order)
        for proc in self._popen.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        self._popen.clear()
        if left:  # never delete what is still mounted: rmtree would descend into it
            raise DevClusterError(f"the real node left {left}; kept {self.dir}")
        shutil.rmtree(self.dir, ignore_errors=True)
        log(f"==> cluster {self.name!r} down (stopped {', '.join(stopped) or 'nothing'}; removed {self.dir})")
        return True

    def status(self) -> tuple[bool, str]:
        state = self.state()
        if not state:
            return False, f"cluster {self.name!r}: not running (no state in {self.dir})"
        running = self.running()
        lines = [f"cluster {self.name!r}  state {self.dir}", f"  kubeconfig  {state.get('kubeconfig')}"]
        ports = state.get("ports", {})
        port_of = {"etcd": "etcd", "kube-apiserver": "apiserver", "kube-controller-manager": "kcm",
                   "kube-scheduler": "scheduler", "kwok": "kwok"}
        for comp in COMPONENTS:
            proc = state.get("processes", {}).get(comp)
            if proc is None:
                lines.append(f"  {comp:24} not started")
                continue
            word = "running" if running.get(comp) else "DEAD"
            lines.append(f"  {comp:24} pid {proc['pid']:<8} {word:8} 127.0.0.1:{ports.get(port_of[comp])}")
        real = state.get("node")
        for comp in node.NODE_PROCESSES if real else ():
            proc = state.get("processes", {}).get(comp)
            word = "running" if running.get(comp) else "DEAD"
            lines.append(f"  {comp:24} pid {proc['pid'] if proc else '-':<8} {word:8} real node {(real or {}).get('name')}")
        owner = state.get("owner")
        if owner:
            lines.append(f"  owned by pid {owner['pid']} ({'alive' if _alive(owner['pid'], owner['start']) else 'dead'})")
        wanted = set(COMPONENTS) | (set(node.NODE_PROCESSES) if real else set())
        healthy = set(running) == wanted and all(running.values())
        if healthy:
            try:
                nodes = self.api().get("/api/v1/nodes")["items"]
                pods = self.api().get("/api/v1/pods?limit=500")
                lines.append(f"  nodes {len(nodes)} ({sum(_node_ready(n) for n in nodes)} Ready), "
                             f"pods {len(pods['items'])}{'+' if pods['metadata'].get('continue') else ''}")
            except (DevClusterError, OSError) as exc:
                healthy = False
                lines.append(f"  API server not answering: {exc}")
        return healthy, "\n".join(lines)


def _kwok_config(bins: Path, opt: Options) -> str:
    stages_dir = k8sbin.asset_dir("kwok", bins)
    stages = sorted(stages_dir.glob("*.yaml"))
    if not stages:
        raise DevClusterError(f"no kwok stages in {stages_dir}: run `python -m railnet.dev.k8sbin build`")
    config = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {
            "podPlayStageParallelism": opt.kwok_parallelism,
            "nodePlayStageParallelism": opt.kwok_parallelism,
            "nodeLeaseParallelism": opt.kwok_parallelism,
        },
    }
    docs = [json.dumps(config, indent=2)] + [s.read_text().strip() for s in stages]
    return "\n---\n".join(docs) + "\n"


def reap_orphans(log: Log = _say) -> list[Path]:
    """Remove clusters whose owning test run died (their processes died with it, by PDEATHSIG)."""
    removed: list[Path] = []
    root = home()
    if not root.is_dir():
        return removed
    for state_file in root.glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            owner = json.loads(state_file.read_text()).get("owner")
            if owner and not _alive(int(owner["pid"]), owner.get("start")):
                cluster = DevCluster(state_file.parent.name, state_dir=state_file.parent)
                cluster.down(log=_quiet)
                log(f"==> removed cluster left by dead test run {owner['pid']}: {state_file.parent}")
                removed.append(state_file.parent)
    return removed


# ------------------------------------------------------------------------------------------- CLI


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"railnet dev-cluster: --{what} wants KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet dev-cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("up", "down", "status"):
        p = sub.add_parser(cmd)
        p.add_argument("--name", default=DEFAULT_NAME, help=f"cluster name (default {DEFAULT_NAME})")
        p.add_argument("--state-dir", type=Path, help=f"state directory (default ${ENV_HOME}/<name>)")
        if cmd == "up":
            p.add_argument("--nodes", type=int, default=3, help="simulated kwok nodes (default 3)")
            p.add_argument("--label", action="append", metavar="K=V", help="node label; {i} = node index")
            p.add_argument("--capacity", action="append", metavar="RES=QTY",
                           help=f"node capacity, merged over {DEFAULT_CAPACITY}")
            p.add_argument("--node-lease-seconds", type=int, default=40)
            p.add_argument("--timeout", type=float, default=60.0, help="start-up deadline in seconds")
            p.add_argument("--real-node", action="store_true",
                           help="also run this machine as a node: containerd + kubelet + kube-proxy + CoreDNS")
    args = parser.parse_args(argv)
    cluster = DevCluster(args.name, state_dir=args.state_dir)
    try:
        if args.cmd == "up":
            nodes = NodeSet(count=args.nodes, labels=_pairs(args.label, "label"),
                            capacity=_pairs(args.capacity, "capacity"))
            kubeconfig = cluster.up(nodes, Options(node_lease_seconds=args.node_lease_seconds),
                                    timeout=args.timeout, real_node=args.real_node)
            print(kubeconfig)
            return 0
        if args.cmd == "down":
            cluster.down()
            return 0
        healthy, text = cluster.status()
        print(text)
        return 0 if healthy else 1
    except (DevClusterError, k8sbin.BuildError, node.NodeError, images.ImageError, OSError) as exc:
        print(f"railnet dev-cluster: error: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def running_cluster(name: str, state_dir: Path | None = None, nodes: NodeSet | None = None,
                    options: Options | None = None, log: Log = _say) -> Iterator[DevCluster]:
    """A cluster owned by this process for the duration of the block (fixtures, benchmarks)."""
    cluster = DevCluster(name, state_dir=state_dir, owner=True)
    cluster.up(nodes, options, log=log)
    try:
        yield cluster
    finally:
        cluster.down(log=log)


if __name__ == "__main__":
    sys.exit(main())
