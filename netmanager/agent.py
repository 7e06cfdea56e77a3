"""railnet-agent: the warm node agent behind the CNI shim.

Requests for different containers run concurrently on a fixed pool of workers; requests for the
same container are serialised, as the CNI spec expects plugins to be; GC runs alone (no ADD in
flight), so it never collects an attachment that an ADD is still making. All state lives in one
SQLite file under a state dir that exactly one agent holds (flock), so a restarted agent picks up
where the previous one stopped and a second agent refuses to start instead of corrupting it.

With `--takeover` (what the DaemonSet runs) a second agent is a rolling update instead: it takes
the socket path over, the previous agent finishes its calls and releases the state dir, and only
then does the new one open the state and serve (netmanager.server says how no call is dropped).
The previous agent then idles until its SIGTERM, so the kubelet does not restart it into a takeover
of its own. `--probe` is the readiness check (netmanager.probe); `--metrics-port` serves Prometheus
metrics (netmanager.metrics).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from cni.attachments import AttachmentStore
from cni.dispatch import Dispatcher
from cni.spec.wire import ShimRequest
from ipam.gate import SharedExclusive
from ipam.plugin import IpamService
from ipam.pools import PoolRegistry
from ipam.sqlite import Database
from ipam.store import IpamStore
from netmanager.kubelet import podresources
from netmanager.kubelet.podresources import PodResources
from netmanager.server import Server, SocketInUse, TakeoverFailed

log = logging.getLogger("railnet.agent")


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class KeyedLocks:
    """One lock per container id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._users: dict[str, int] = defaultdict(int)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
            self._users[key] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                self._users[key] -= 1
                if not self._users[key]:
                    del self._users[key], self._locks[key]


class StateDirBusy(RuntimeError):
    pass


def lock_state_dir(state_dir: Path, wait: float = 0.0) -> IO[str]:
    """Hold `state_dir/agent.lock` for the life of the process (the kernel drops it on exit); try for
    up to `wait` seconds (a predecessor that just handed over is releasing it)."""
    if not state_dir.exists():
        state_dir.mkdir(mode=0o700, parents=True)
    fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    handle = os.fdopen(fd, "r+")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StateDirBusy(f"another railnet agent (pid {holder}) holds {state_dir}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class Agent:
    def __init__(self, state_dir: Path, pools_dir: Path | None, sysfs: Path, kubeconfig: Path | None = None,
                 node_name: str = "", block_grace: float = 30.0, reconcile_interval: float = 60.0,
                 reconcile_min_age: float = 60.0, meta_cache: bool = True,
                 pod_resources: Path | None = None, claims: Any = None, metrics: Any = None) -> None:
        """`claims`: the DRA driver's ClaimSource (cni.meta.claims), for networks on a claim's NIC;
        `metrics`: a netmanager.metrics.AgentMetrics that every call is counted in."""
        self.metrics = metrics
        db = Database(state_dir / "railnet.db")
        self.attachments = AttachmentStore(db)
        store = IpamStore(db)
        self.cluster: Any = None
        self.publisher: Any = None
        self.reconciler: Any = None
        self.locks = KeyedLocks()
        self.gc_gate = SharedExclusive()
        if kubeconfig is not None:  # named pools are IPPool objects of the cluster (ipam/cluster.py)
            from ipam.cluster import ClusterStore
            from ipam.kubeapi import KubeApi
            from ipam.publisher import Publisher

            self.cluster = ClusterStore(store, KubeApi(kubeconfig), node_name, grace=block_grace)
            self.publisher = Publisher(self.cluster)
            self.cluster.start()
            self.publisher.start()
            if reconcile_interval > 0:  # addresses of pods gone for good (ipam/reconcile.py)
                from ipam.reconcile import Reconciler

                self.reconciler = Reconciler(self.cluster, self.container, interval=reconcile_interval,
                                             min_age=reconcile_min_age)
                self.reconciler.start()
        pods: Any = None
        self.meta_cache: Any = None
        if kubeconfig is not None:  # the meta plugin reads pods and NADs, and writes network-status
            from cni.meta.kube import KubePods

            pods = KubePods(kubeconfig)
            if meta_cache and node_name:  # watch this node's pods and the NADs; GET only on a miss
                from cni.meta.cache import MetaCache

                pods = self.meta_cache = MetaCache.from_kubeconfig(kubeconfig, node_name)
                self.meta_cache.start()
        # Asked only for networks bound to a device resource (k8s.v1.cni.cncf.io/resourceName).
        devices = PodResources(pod_resources) if pod_resources is not None else None
        self.dispatcher = Dispatcher(IpamService(store, PoolRegistry(pools_dir), self.cluster), self.attachments,
                                     sysfs, pods=pods, devices=devices, claims=claims)

    def close(self) -> None:
        """Stop the cluster store's threads (publishing block status, the IPPool watch, the meta caches)."""
        if self.meta_cache is not None:
            self.meta_cache.stop()
        if self.reconciler is not None:
            self.reconciler.stop()
        if self.publisher is not None:
            self.publisher.stop()
            self.cluster.stop()

    @contextmanager
    def container(self, container_id: str) -> Iterator[None]:
        """What a request for `container_id` holds: no GC running, no other request for it."""
        with self.gc_gate.shared(), self.locks.hold(container_id):
            yield

    @contextmanager
    def _serialised(self, env: dict[str, str]) -> Iterator[None]:
        if env.get("CNI_COMMAND") == "GC":
            with self.gc_gate.exclusive():
                yield
            return
        with self.container(env.get("CNI_CONTAINERID", "")):
            yield

    def serve_one(self, request: ShimRequest) -> tuple[int, str]:
        env, plugin = request.env, request.plugin
        command = env.get("CNI_COMMAND", "")
        started = time.perf_counter()
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            with self._serialised(env):
                code, stdout = self.dispatcher.handle(plugin, env, request.stdin)
        finally:
            if self.metrics is not None:
                self.metrics.in_flight.dec()
        seconds = time.perf_counter() - started
        fields = {"plugin": plugin, "cmd": command, "cid": env.get("CNI_CONTAINERID"),
                  "ifname": env.get("CNI_IFNAME"), "ms": round(seconds * 1e3, 2), "exit": code}
        error_code = 0
        if code:
            error = json.loads(stdout) if stdout else {}
            fields["error"] = error.get("msg", "")
            error_code = error.get("code", code) if isinstance(error.get("code"), int) else code
        if self.metrics is not None:
            self.metrics.observe(plugin, command, error_code, seconds)
        # VERSION is what the readiness probe sends every few seconds: not worth a line each.
        log.log(logging.DEBUG if command == "VERSION" else logging.INFO, "cni request", extra={"fields": fields})
        return code, stdout


class DraStartError(RuntimeError):
    pass


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster_kubeconfig(env: dict[str, str] | None = None, account: Path = SERVICE_ACCOUNT) -> Path:
    """A kubeconfig (in a new private temp dir) for this pod's service account at the API server's
    service address from the environment: no DNS, which on a node whose CNI is not up yet may not
    answer. The token is read from its file by the clients."""
    env = dict(os.environ) if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port.isdigit():
        raise ValueError("--in-cluster needs KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT (set in every pod)")
    for name in ("token", "ca.crt"):
        if not (account / name).is_file():
            raise ValueError(f"--in-cluster: {account / name} is missing (automountServiceAccountToken off?)")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "in-cluster",
              "clusters": [{"name": "in-cluster", "cluster": {"server": server,
                                                              "certificate-authority": str(account / "ca.crt")}}],
              "users": [{"name": "sa", "user": {"tokenFile": str(account / "token")}}],
              "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": "sa"}}]}
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="railnet-agent-")) / "kubeconfig"
    path.write_text(json.dumps(config))  # JSON is YAML
    path.chmod(0o600)
    return path


def _dra_driver(args: argparse.Namespace) -> Any:
    """The DRA driver (not started) when --dra-driver is given; DraStartError says why it cannot be."""
    if not args.dra_driver:
        return None
    from netmanager.dra.driver import DraDriver

    try:
        return DraDriver(args.kubeconfig, args.node_name, args.kubelet_dir, args.state_dir / "dra", args.cdi_dir,
                         args.sysfs, args.dev_root, args.dra_resync)
    except Exception as exc:  # sysfs discovery, the kubeconfig, a kubelet dir too deep for sockets
        raise DraStartError(f"cannot start the DRA driver: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet agent", description="railnet node agent")
    parser.add_argument("--socket", type=Path, default=Path(os.environ.get("RAILNET_AGENT_SOCKET",
                                                                               "/run/railnet/agent.sock")))
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("RAILNET_STATE_DIR",
                                                                                  "/var/lib/railnet")))
    parser.add_argument("--pools-dir", type=Path, default=Path(os.environ.get("RAILNET_POOLS_DIR",
                                                                                  "/etc/railnet/pools")))
    parser.add_argument("--sysfs", type=Path, default=Path(os.environ.get("RAILNET_SYSFS_ROOT", "/sys")))
    parser.add_argument("--kubeconfig", type=Path, default=os.environ.get("RAILNET_KUBECONFIG") or None,
                        help="take named pools from the cluster's IPPool objects (default: the pools dir)")
    parser.add_argument("--in-cluster", action="store_true",
                        help="instead of --kubeconfig: this pod's service account, at the API server's service "
                             "address (KUBERNETES_SERVICE_HOST/PORT), without DNS")
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""),
                        help="this node's name in the cluster (env NODE_NAME); needed with --kubeconfig")
    parser.add_argument("--block-grace", type=float, default=30.0,
                        help="seconds an emptied block is kept before it is given back (default %(default)s)")
    parser.add_argument("--reconcile-interval", type=float, default=60.0,
                        help="with --kubeconfig: seconds between passes that release addresses of pods gone from "
                             "the API whose netns is gone too; 0 = off (default %(default)s)")
    parser.add_argument("--reconcile-min-age", type=float, default=60.0,
                        help="attachments younger than this are never reconciled (default %(default)s)")
    parser.add_argument("--publish-topology", type=float, default=0.0, metavar="SECONDS",
                        help="with --kubeconfig: publish this node's NodeTopology (from --sysfs) at start and "
                             "every SECONDS (default 0: off)")
    parser.add_argument("--publish-host-listeners", type=float, default=0.0, metavar="SECONDS",
                        help="with --kubeconfig: annotate this node with the TCP ports host processes listen on "
                             "(railnet.io/host-listeners, read by the job controller), checked every SECONDS "
                             "(default 0: off)")
    parser.add_argument("--no-meta-cache", dest="meta_cache", action="store_false",
                        help="with --kubeconfig: the meta plugin GETs the pod and its NADs on every ADD instead "
                             "of reading this node's pod and NAD watch caches (for comparison)")
    parser.add_argument("--pod-resources-socket", type=Path, default=podresources.DEFAULT_SOCKET, metavar="PATH",
                        help="the kubelet's pod-resources API, for NADs with a resourceName (default %(default)s)")
    parser.add_argument("--dra-driver", action="store_true",
                        help="with --kubeconfig: also be the kubelet's DRA driver rdma.railnet.io (publish this "
                             "node's RDMA NICs as a ResourceSlice, prepare claims as CDI specs; docs/dra.md)")
    parser.add_argument("--kubelet-dir", type=Path, default=Path("/var/lib/kubelet"),
                        help="the kubelet's root dir: its plugins_registry/ and plugins/ (default %(default)s)")
    parser.add_argument("--cdi-dir", type=Path, default=Path("/var/run/cdi"),
                        help="where the DRA driver writes CDI specs; one of the runtime's cdi_spec_dirs "
                             "(default %(default)s)")
    parser.add_argument("--dev-root", type=Path, default=Path("/dev"),
                        help="where the RDMA character devices are (<dir>/infiniband/uverbsN; default %(default)s)")
    parser.add_argument("--dra-resync", type=float, default=60.0, metavar="SECONDS",
                        help="rediscover and republish the ResourceSlice at least this often (default %(default)s)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent CNI requests (default %(default)s)")
    parser.add_argument("--takeover", action="store_true",
                        help="if an agent already serves --socket, take the socket over from it (rolling update): "
                             "it finishes its calls and releases the state dir, then this one serves")
    parser.add_argument("--takeover-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the previous agent to hand over (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="serve Prometheus metrics on this TCP port (0: off; SO_REUSEPORT, so a successor "
                             "can bind it during a rolling update)")
    parser.add_argument("--metrics-address", default="",
                        help="address for --metrics-port (default: all addresses)")
    parser.add_argument("--ready-file", type=Path,
                        help="write the served socket's inode here when serving (pod-local; the readiness probe "
                             "checks it: netmanager.probe --ready-file)")
    parser.add_argument("--probe", action="store_true",
                        help="readiness check instead of serving: one CNI VERSION round trip on --socket; "
                             "exit 0 when served")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.probe:
        from netmanager import probe

        return probe.main(["--socket", str(args.socket)] +
                          (["--ready-file", str(args.ready_file)] if args.ready_file else []))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])

    if args.in_cluster:
        try:
            args.kubeconfig = in_cluster_kubeconfig()
        except ValueError as exc:
            print(f"railnet agent: {exc}", file=sys.stderr)
            return 2
    if args.kubeconfig is not None and not args.node_name:
        print("railnet agent: --kubeconfig needs --node-name (or NODE_NAME)", file=sys.stderr)
        return 2
    if args.dra_driver:  # the host's devices, also from a container (cni.spec.hostroot)
        from cni.spec.hostroot import host_path

        args.dev_root = Path(host_path(str(args.dev_root)))
    if args.dra_driver and args.kubeconfig is None:
        print("railnet agent: --dra-driver needs --kubeconfig and --node-name (it reads claims and publishes "
              "ResourceSlices)", file=sys.stderr)
        return 2
    metrics = None
    if args.metrics_port:
        from netmanager.metrics import AgentMetrics

        metrics = AgentMetrics()
    server: Server | None = None
    try:
        if args.takeover:  # the socket first: callers queue on our socket while the predecessor finishes
            server = Server(args.socket, _not_yet, workers=max(1, args.workers), takeover=True)
            server.await_predecessor(args.takeover_timeout)
            lock = lock_state_dir(args.state_dir, wait=10.0)
        else:
            lock = lock_state_dir(args.state_dir)
        dra = _dra_driver(args)  # before serving: a driver that cannot start stops the agent with the reason
        agent = Agent(args.state_dir, args.pools_dir, args.sysfs, args.kubeconfig, args.node_name,
                      args.block_grace, args.reconcile_interval, args.reconcile_min_age, args.meta_cache,
                      args.pod_resources_socket, claims=dra.attachments() if dra is not None else None,
                      metrics=metrics)
        if server is None:
            server = Server(args.socket, agent.serve_one, workers=max(1, args.workers))
        server.serve = agent.serve_one
        metrics_server = None
        if metrics is not None:
            from netmanager.metrics import MetricsServer

            metrics.watch_state(args.state_dir / "railnet.db",
                                (lambda: len(dra.preparer.store.all())) if dra is not None else None)
            metrics_server = MetricsServer(metrics.registry, args.metrics_port, args.metrics_address)
    except (StateDirBusy, SocketInUse, TakeoverFailed) as exc:
        print(f"railnet agent: {exc}; stop it first (one agent per node)", file=sys.stderr)
        if server is not None:
            server.shutdown()
        return 1
    except (DraStartError, OSError) as exc:
        print(f"railnet agent: {exc}", file=sys.stderr)
        if server is not None:
            server.shutdown()
        return 1

    topology = None
    if args.kubeconfig is not None and args.publish_topology > 0:
        from netmanager.topology_loop import TopologyPublisher

        topology = TopologyPublisher(args.kubeconfig, args.node_name, args.sysfs, args.publish_topology)
        topology.start()

    listeners = None
    if args.kubeconfig is not None and args.publish_host_listeners > 0:
        from netmanager.host_listeners import ListenerPublisher

        listeners = ListenerPublisher(args.kubeconfig, args.node_name, args.publish_host_listeners)
        listeners.start()

    if dra is not None:
        dra.start()

    terminated = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        terminated.set()
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.ready_file is not None:
        from netmanager.probe import write_ready_file

        write_ready_file(args.ready_file, args.socket)
    log.info("serving", extra={"fields": {"socket": str(args.socket), "state": str(args.state_dir),
                                          "workers": args.workers, "metrics_port": args.metrics_port}})
    server.serve_forever()
    if args.ready_file is not None:
        args.ready_file.unlink(missing_ok=True)
    server.shutdown()  # finishes the calls in hand and the ones already queued, removes our socket
    if metrics_server is not None:
        metrics_server.close()
    if topology is not None:
        topology.stop()
    if listeners is not None:
        listeners.stop()
    if dra is not None:
        dra.stop()
    agent.close()
    lock.close()
    if server.handover is not None:
        server.answer_handover()  # the state is released: the successor may serve now
        log.info("handed over to the new agent")
        if args.takeover:  # in a DaemonSet: exiting would make the kubelet restart us into a takeover
            while not terminated.wait(1.0):
                pass
    log.info("stopped")
    return 0


def _not_yet(request: ShimRequest) -> tuple[int, str]:
    raise AssertionError("served a call before the agent was built")  # serve_forever starts after


if __name__ == "__main__":
    sys.exit(main())
