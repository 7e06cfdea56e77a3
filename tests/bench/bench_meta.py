"""Meta plugin: railnet (shim -> agent, pod/NAD watch caches) vs Multus's thick plugin (multus-shim ->
multus-daemon, pod/NAD informers), on one real kube-apiserver, in the same run.

    sudo .venv/bin/python tests/bench/bench_meta.py [--pods 40] [--callers 4] [--per-caller 10] [--json]

Both run the same pods, the same NetworkAttachmentDefinitions and the same delegates: the node's
primary network is the reference `ptp` + `host-local` (the Calico stand-in, a conflist in the conf
dir), and each pod's `k8s.v1.cni.cncf.io/networks` selects two NADs, each the reference `macvlan` +
`host-local` on its own veth "NIC" (rail). Every call is an exec of the shim exactly as a runtime
does it. Pods are bound to one Node object (no kubelet), so both daemons' node-filtered pod caches
see them; both write network-status back.
* latency: `--pods` ADDs then DELs per contender, interleaved one pod at a time with the order
  rotated (railnet, Multus, and the floor: the same three delegates exec'd directly, ptp then
  both macvlans, as the meta plugins do serially), plus, for reference, railnet with its own rail
  NADs (railnet-macvlan + railnet-ipam on the same NICs, run inside the agent: no exec);
* throughput: `--callers` concurrent callers x `--per-caller` pods, per contender, two rounds
  alternating who goes first; API requests per ADD from `apiserver_request_total` over that phase.
Multus's daemon only reads the in-cluster service-account files; it runs in a private mount
namespace where /run is a tmpfs holding just a token for a bench ServiceAccount and the host's
/run/netns (all pod netns are created before it starts). Nothing of Multus is in railnet: its
binaries come from `python -m railnet.dev.peers build` (`make bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kubernetes import client, config  # noqa: E402
from kubernetes.dynamic import DynamicClient  # noqa: E402

from railnet.dev import k8sbin, peers  # noqa: E402
from railnet.dev.devcluster import DevCluster, NodeSet, running_cluster  # noqa: E402
from railnet.dev.lab import REFERENCE_CNI_DIR, AgentProcess, Lab, PluginCall, links_in, run_plugin  # noqa: E402
from tests.kube import kubeutil  # noqa: E402

NS = "bench-meta"
NODE = "bench-meta-node"
NAD_API = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")
NAD_CRD = "network-attachment-definitions.k8s.cni.cncf.io.yaml"
_METRIC = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$')
MULTUS_RUNNER = r"""
set -e
W="$1"; shift
mkdir -p "$W/oldrun"
mount --rbind /run "$W/oldrun"
mount -t tmpfs bench-meta-run /run
mkdir -p /run/netns /run/secrets/kubernetes.io/serviceaccount
mount --rbind "$W/oldrun/netns" /run/netns
cp "$W/sa/token" "$W/sa/ca.crt" /run/secrets/kubernetes.io/serviceaccount/
exec "$@"
"""


def request_counts(cluster: DevCluster) -> dict[str, float]:
    status, text = cluster.api().request("GET", "/metrics", timeout=30)
    assert status == 200, text
    out: dict[str, float] = {}
    for line in str(text).splitlines():
        m = _METRIC.match(line)
        if m:
            out[m["labels"]] = float(m["value"])
    return out


def meta_requests(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Requests on pods, NADs and events (what a meta plugin touches), by verb and resource."""
    by: dict[str, int] = {}
    for labels, value in after.items():
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if lab.get("resource") in ("pods", "network-attachment-definitions", "events") and \
                lab.get("verb") not in ("WATCH", "LIST"):
            delta = int(value - before.get(labels, 0.0))
            if delta:
                sub = f"/{lab['subresource']}" if lab.get("subresource") else ""
                key = f"{lab.get('verb')} {lab.get('resource')}{sub}"
                by[key] = by.get(key, 0) + delta
    return by


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


class Bench:
    def __init__(self, lab: Lab, cluster: DevCluster, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
        self.lab, self.cluster, self.core, self.custom = lab, cluster, core, custom
        self.tmp = lab.tmp
        self.nics = [lab.nic("r0"), lab.nic("r1")]
        self.conf_dir = self.tmp / "net.d"
        self.conf_dir.mkdir()
        self.primary = {"cniVersion": "1.0.0", "name": "pods", "plugins": [
            {"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.90.0.0/16"}]],
                                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.tmp / "hl")}}]}
        (self.conf_dir / "10-pods.conflist").write_text(json.dumps(self.primary))
        self.rails = [{"cniVersion": "1.0.0", "name": f"rail{i}", "type": "macvlan", "master": nic, "mode": "bridge",
                       "ipam": {"type": "host-local", "ranges": [[{"subnet": f"10.{91 + i}.0.0/16"}]],
                                "dataDir": str(self.tmp / "hl")}} for i, nic in enumerate(self.nics)]
        # the same rails as railnet's own NADs would be: railnet-macvlan + railnet-ipam, run inside the agent
        self.own_rails = [{"cniVersion": "1.0.0", "name": f"own{i}", "type": "railnet-macvlan", "master": nic,
                           "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": f"10.{93 + i}.0.0/16"}]]}}
                          for i, nic in enumerate(self.nics)]
        self.netns: dict[str, str] = {}
        self.pods: dict[str, client.V1Pod] = {}
        self.multus: subprocess.Popen[bytes] | None = None
        self.agent: AgentProcess | None = None

    # ---- cluster objects ---------------------------------------------------------------------
    def objects(self, names: list[str]) -> None:
        core = self.core
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=NODE)))
        for rail in self.rails + self.own_rails:
            body = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                    "metadata": {"name": rail["name"]}, "spec": {"config": json.dumps(rail)}}
            self.custom.create_namespaced_custom_object(NAD_API[0], NAD_API[1], NS, NAD_API[2], body)
        for name in names:
            networks = "own0, own1" if name.startswith("lat-inproc-") else "rail0, rail1"
            pod = client.V1Pod(
                metadata=client.V1ObjectMeta(name=name, annotations={"k8s.v1.cni.cncf.io/networks": networks}),
                spec=client.V1PodSpec(node_name=NODE, containers=[client.V1Container(name="c", image="none")]))
            self.pods[name] = core.create_namespaced_pod(NS, pod)
            self.netns[name] = self.lab.netns(name)

    # ---- railnet ------------------------------------------------------------------------------
    def start_railnet(self) -> Callable[[str, str], PluginCall]:
        agent = AgentProcess(self.tmp / "agent")
        agent.args = ["--kubeconfig", str(self.cluster.kubeconfig), "--node-name", NODE, "--log-level", "warning",
                      "--reconcile-interval", "0"]
        self.lab.agents.append(agent)
        agent.start()
        self.agent = agent
        bin_dir = self.lab.install_shim()
        conf = {"cniVersion": "1.0.0", "name": "railnet", "type": "railnet", "clusterNetwork": "pods",
                "confDir": str(self.conf_dir)}

        def call(command: str, name: str) -> PluginCall:
            return run_plugin(bin_dir / "railnet", command, conf, container_id=f"c-{name}", ifname="eth0",
                              netns=self.netns[name], cni_path=[bin_dir, REFERENCE_CNI_DIR], env=agent.env(),
                              args=self.cni_args(name))
        return call

    # ---- Multus -------------------------------------------------------------------------------
    def start_multus(self) -> Callable[[str, str], PluginCall]:
        work = self.tmp / "multus"
        (work / "sa").mkdir(parents=True)
        self.core.create_namespaced_service_account(
            "kube-system", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="bench-multus")))
        client.RbacAuthorizationV1Api(self.core.api_client).create_cluster_role_binding(client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name="bench-multus"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="cluster-admin"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="bench-multus", namespace="kube-system")]))
        token = self.core.create_namespaced_service_account_token(
            "bench-multus", "kube-system", client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=7200))).status.token
        (work / "sa" / "token").write_text(token)
        (work / "sa" / "ca.crt").write_bytes((self.cluster.pki / "ca.crt").read_bytes())
        sockets, generated = work / "run", work / "net.d"
        sockets.mkdir()
        generated.mkdir()
        daemon_conf = {"cniVersion": "1.0.0", "logLevel": "error", "logToStderr": True,
                       "cniConfigDir": str(generated), "multusAutoconfigDir": str(self.conf_dir),
                       "multusConfigFile": "auto", "socketDir": str(sockets), "daemonSocketDir": str(sockets),
                       "cniDir": str(work / "cache"), "binDir": str(REFERENCE_CNI_DIR)}
        (work / "daemon-config.json").write_text(json.dumps(daemon_conf))
        host, port = self.cluster.api().server.split("://", 1)[1].rsplit(":", 1)
        env = {**os.environ, "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
               "MULTUS_NODE_NAME": NODE}
        log = open(work / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
        self.multus = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "bash", "-c", MULTUS_RUNNER, "runner", str(work),
             str(peers.multus_binary("multus-daemon")), "--config", str(work / "daemon-config.json")],
            stdout=log, stderr=log, env=env)
        log.close()
        shim_conf_path = generated / "00-multus.conf"
        deadline = time.monotonic() + 60
        while not (shim_conf_path.exists() and (sockets / "multus.sock").exists()):
            if self.multus.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"multus-daemon did not start:\n{(work / 'daemon.log').read_text()[-3000:]}")
            time.sleep(0.1)
        shim_conf = json.loads(shim_conf_path.read_text())
        shim_conf.setdefault("daemonSocketDir", str(sockets))
        shim = peers.multus_binary("multus-shim")

        def call(command: str, name: str) -> PluginCall:
            return run_plugin(shim, command, shim_conf, container_id=f"c-{name}", ifname="eth0",
                              netns=self.netns[name], cni_path=[REFERENCE_CNI_DIR], args=self.cni_args(name))
        return call

    def stop(self) -> None:
        if self.multus is not None and self.multus.poll() is None:
            self.multus.send_signal(signal.SIGTERM)
            try:
                self.multus.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.multus.kill()
                self.multus.wait()

    # ---- the floor: the three delegates exec'd directly ------------------------------------------
    def floor(self, command: str, name: str) -> PluginCall:
        chain = [("eth0", {**self.primary["plugins"][0], "cniVersion": "1.0.0", "name": "pods"}),
                 ("net1", self.rails[0]), ("net2", self.rails[1])]
        if command == "DEL":
            chain.reverse()
        started = time.perf_counter()
        code, output = 0, None
        for ifname, conf in chain:
            call = run_plugin(REFERENCE_CNI_DIR / conf["type"], command, conf, container_id=f"c-{name}",
                              ifname=ifname, netns=self.netns[name], cni_path=[REFERENCE_CNI_DIR])
            if not call.ok:
                code, output = call.code, call.output
                break
        return PluginCall(code, output, time.perf_counter() - started, "")

    def cni_args(self, name: str) -> str:
        meta = self.pods[name].metadata
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={name};"
                f"K8S_POD_INFRA_CONTAINER_ID=c-{name};K8S_POD_UID={meta.uid}")


def latency(bench: Bench, calls: dict[str, Callable[[str, str], PluginCall]], pods: int) -> dict[str, Any]:
    names = list(calls)
    adds: dict[str, list[float]] = {n: [] for n in names}
    dels: dict[str, list[float]] = {n: [] for n in names}
    failures: dict[str, list[str]] = {n: [] for n in names}
    for i in range(pods):
        order = names[i % len(names):] + names[:i % len(names)]
        for who in order:
            name = f"lat-{who}-{i}"
            add = calls[who]("ADD", name)
            if add.ok:
                adds[who].append(add.seconds * 1e3)
                if who != "floor" and sorted(links_in(bench.netns[name])) != ["eth0", "lo", "net1", "net2"]:
                    failures[who].append(f"{name}: links {links_in(bench.netns[name])}")
            else:
                failures[who].append(f"ADD {name}: {add.output} {add.stderr[-300:]}")
        for who in order:
            name = f"lat-{who}-{i}"
            delete = calls[who]("DEL", name)
            (dels[who].append(delete.seconds * 1e3) if delete.ok
             else failures[who].append(f"DEL {name}: {delete.output} {delete.stderr[-300:]}"))
            if links_in(bench.netns[name]) != ["lo"]:
                failures[who].append(f"{name}: after DEL {links_in(bench.netns[name])}")
    out = {}
    for who in names:
        a, d = adds[who] or [float("nan")], dels[who] or [float("nan")]
        out[who] = {"add_p50_ms": round(statistics.median(a), 1), "add_p99_ms": round(pct(a, 0.99), 1),
                    "del_p50_ms": round(statistics.median(d), 1), "del_p99_ms": round(pct(d, 0.99), 1),
                    "adds": len(adds[who]), "failures": len(failures[who]), "first_failures": failures[who][:2]}
    return out


def throughput(bench: Bench, who: str, call: Callable[[str, str], PluginCall], callers: int, per_caller: int,
               round_: int) -> dict[str, Any]:
    names = [[f"tp{round_}-{who}-{c}-{j}" for j in range(per_caller)] for c in range(callers)]
    failures: list[str] = []

    def phase(command: str) -> float:
        gate = threading.Barrier(callers + 1)

        def caller(mine: list[str]) -> None:
            gate.wait()
            for name in mine:
                res = call(command, name)
                if not res.ok:
                    failures.append(f"{command} {name}: {res.output}")
        threads = [threading.Thread(target=caller, args=(mine,)) for mine in names]
        for t in threads:
            t.start()
        gate.wait()
        started = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - started

    before = request_counts(bench.cluster)
    add_wall = phase("ADD")
    time.sleep(1.0)  # let asynchronous writers (Multus's event recorder) finish before counting
    requests = meta_requests(before, request_counts(bench.cluster))
    del_wall = phase("DEL")
    total = callers * per_caller
    return {"adds_per_s": round(total / add_wall, 1), "dels_per_s": round(total / del_wall, 1),
            "api_requests_per_add": round(sum(requests.values()) / total, 2), "api_requests": requests,
            "failures": len(failures), "first_failures": failures[:2]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=40, help="latency: pods per contender (default %(default)s)")
    parser.add_argument("--callers", type=int, default=4, help="throughput: concurrent callers")
    parser.add_argument("--per-caller", type=int, default=10, help="throughput: pods per caller per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_meta: skipped: needs root (network namespaces, veth links, a mount namespace for Multus)")
        return 0
    k8sbin.build()
    peers.build_multus()
    print(f"==> bench meta: {args.pods} pods per contender (latency), {args.callers} x {args.per_caller} x 2 rounds "
          f"(throughput); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    contenders = ("railnet", "multus")
    names = [f"lat-{w}-{i}" for w in (*contenders, "floor", "inproc") for i in range(args.pods)]
    names += [f"tp{r}-{w}-{c}-{j}" for r in range(2) for w in contenders for c in range(args.callers)
              for j in range(args.per_caller)]
    report: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    with running_cluster(f"bench-meta-{os.getpid()}", nodes=NodeSet(count=0)) as cluster, Lab("rbm") as lab:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        kubeutil.apply(DynamicClient(api), kubeutil.load([kubeutil.DEPLOY / "crds" / NAD_CRD]))
        bench = Bench(lab, cluster, core, custom)
        try:
            bench.objects(names)
            railnet = bench.start_railnet()
            calls = {"railnet": railnet, "multus": bench.start_multus(), "floor": bench.floor, "inproc": railnet}
            time.sleep(2.0)  # both daemons' pod caches have the pods
            for who in (*contenders, "inproc"):  # one warm-up pod each, not counted
                warm = f"lat-{who}-0"
                calls[who]("ADD", warm)
                calls[who]("DEL", warm)
            report["latency"] = latency(bench, calls, args.pods)
            print(json.dumps({"latency": report["latency"]}), flush=True)
            report["throughput"] = {w: [] for w in contenders}
            for round_ in range(2):
                for who in (contenders if round_ % 2 == 0 else contenders[::-1]):
                    row = throughput(bench, who, calls[who], args.callers, args.per_caller, round_)
                    report["throughput"][who].append(row)
                    print(json.dumps({who: row}), flush=True)
        finally:
            bench.stop()
            api.close()
    report["load_after"] = os.getloadavg()[0]
    lat, tp = report["latency"], report["throughput"]
    best = {w: max(r["adds_per_s"] for r in tp[w]) for w in contenders}
    best_del = {w: max(r["dels_per_s"] for r in tp[w]) for w in contenders}
    print(f"\n==> peer: Multus thick plugin (multus-shim + multus-daemon) at {peers.MULTUS_COMMIT[:12]} (v4.3.0)")
    print(f"{'':22}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}{'ADD/s':>8}{'DEL/s':>8}{'req/ADD':>9}")
    for who in (*contenders, "floor", "inproc"):
        row = lat[who]
        extra = (f"{best[who]:>8}{best_del[who]:>8}{tp[who][-1]['api_requests_per_add']:>9}" if who in best else "")
        label = {"railnet": "railnet shim+agent", "multus": "Multus shim+daemon",
                 "floor": "floor (3 delegates)", "inproc": "railnet, own rails"}[who]
        print(f"{label:22}{row['add_p50_ms']:>9}{row['add_p99_ms']:>9}{row['del_p50_ms']:>9}{row['del_p99_ms']:>9}"
              + extra)
    r, m = lat["railnet"], lat["multus"]
    print(f"==> railnet / Multus: ADD p50 {r['add_p50_ms'] / m['add_p50_ms']:.2f}x (goal <= 0.5), "
          f"ADD p99 {r['add_p99_ms'] / m['add_p99_ms']:.2f}x, DEL p50 {r['del_p50_ms'] / m['del_p50_ms']:.2f}x "
          f"(goal <= 0.7), DEL p99 {r['del_p99_ms'] / m['del_p99_ms']:.2f}x, "
          f"ADD/s {best['railnet'] / best['multus']:.2f}x, DEL/s {best_del['railnet'] / best_del['multus']:.2f}x")
    print(f"==> load average before {report['load_before']:.2f}, after {report['load_after']:.2f}")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
