"""`make cluster-demo`: the whole system on the dev cluster, end to end.

Brings up the dev cluster with the real node (kubelet + containerd on this machine) and kwok GPU nodes
(hgx-h100 NodeTopology each), builds railnet's image and imports it into the node's containerd, installs
railnet with the Helm chart (DaemonSet railnet-node, the job controller, the scheduler, an auto rail network
with a pool per rail), runs a host-network TFJob and a PyTorchJob with two RoCE rails on the real node (and a
PyTorchJob placed on the kwok GPU nodes), prints a table per pod from the API and the jobs' outcome, then
tears everything down and checks that nothing leaked. Exits non-zero, with the reason, when a step fails.

The real node has no GPUs or RoCE NICs: the agent reads the hgx-h100 fixture sysfs whose eight NICs are
veth pairs on this machine, and two device plugins advertise `nvidia.com/gpu` and `rdma/roce` so the kubelet
admits pods that request them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from jobs import api
from netmanager.topology.discover import discover
from railnet.dev import chart, images, k8sbin, kwok_topology, node, railnet_image
from railnet.dev import cluster_demo_jobs as cj
from railnet.dev.devcluster import DevCluster
from railnet.dev.deviceplugin import DevicePlugin
from railnet.dev.fixtures import build_fixture
from railnet.dev.lab import Lab
from scheduler.live.kubeapi import KubeApi, endpoint_from_config

T = TypeVar("T")
NS, SYSTEM = cj.NAMESPACE, "railnet-system"
STEPS = 7


class DemoError(RuntimeError):
    """A step failed; the message says which and why."""


class Progress:
    def __init__(self) -> None:
        self.n, self.t0, self.step_t0 = 0, time.monotonic(), time.monotonic()

    def step(self, text: str, at: int | None = None) -> None:
        self.done()
        self.n = at or self.n + 1
        self.step_t0 = time.monotonic()
        print(f"[{self.n}/{STEPS}] {text}", flush=True)

    def done(self) -> None:
        if self.n:
            print(f"      ({time.monotonic() - self.step_t0:.1f}s)", flush=True)

    def say(self, text: str) -> None:
        print(f"    {text}", flush=True)


def wait(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def point_netdev(sysfs: Path, pci_address: str, netdev: str) -> None:
    """Give the fixture NIC at `pci_address` the netdev `netdev` (a veth on this machine)."""
    device = (sysfs / "bus" / "pci" / "devices" / pci_address).resolve()
    (old,) = list((device / "net").iterdir())
    old.rename(device / "net" / netdev)
    (sysfs / "class" / "net" / old.name).unlink()
    (sysfs / "class" / "net" / netdev).symlink_to(Path("../../") / (device / "net" / netdev).relative_to(sysfs))
    for ib in (device / "infiniband").iterdir():
        ndevs = ib / "ports" / "1" / "gid_attrs" / "ndevs" / "0"
        if ndevs.exists():
            ndevs.write_text(netdev + "\n")


class Demo:
    def __init__(self, kwok_nodes: int, fail_over: bool = True) -> None:
        self.p = Progress()
        self.fail_over = fail_over
        self.kwok_nodes = kwok_nodes
        self.tag = uuid.uuid4().hex[:6]
        self.dev = DevCluster(f"cluster-demo-{self.tag}", owner=True)
        self.lay = node.Layout(self.dev.dir, self.dev.name)
        self.tmp = Path(tempfile.mkdtemp(prefix="railnet-cluster-demo-"))
        self.sysfs = self.tmp / "sys"
        self.socket_dir = Path("/run/railnet") / f"cluster-demo-{self.tag}"  # the shim follows only /run/railnet/
        self.lab = Lab("rcd")
        self.plugins: list[DevicePlugin] = []
        self.kube: KubeApi | None = None
        self.ports = {k: _free_port() for k in ("node", "controller", "scheduler")}
        self.failures: list[str] = []

    # -- helpers -----------------------------------------------------------------------------------------
    def api(self) -> KubeApi:
        if self.kube is None:
            self.kube = KubeApi(endpoint_from_config(str(self.dev.kubeconfig)), user_agent="railnet-cluster-demo")
        return self.kube

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 180) -> str:
        proc = subprocess.run([str(k8sbin.binary("kubectl")), f"--kubeconfig={self.dev.kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def pods(self, ns: str) -> list[dict[str, Any]]:
        return list(self.api().get(f"/api/v1/namespaces/{ns}/pods")["items"])

    # -- the steps ----------------------------------------------------------------------------------------
    def cluster(self) -> None:
        self.p.step(f"dev cluster: control plane, the real node and {self.kwok_nodes} kwok GPU nodes (hgx-h100)")
        self.before = node.host_state()
        nodes = kwok_topology.node_set("kwok-gpu-", self.kwok_nodes, labels={"railnet.io/leaf": "leaf-{i}"})
        self.dev.up(nodes, log=lambda msg: None, real_node=True)
        listed = self.api().get("/api/v1/nodes")["items"]
        for n in listed:
            cap = n["status"].get("allocatable", {})
            kind = "real (kubelet + containerd)" if n["metadata"]["name"] == self.lay.node_name else "kwok"
            self.p.say(f"node {n['metadata']['name']:<12} {kind:<28} GPUs {cap.get('nvidia.com/gpu', '0'):>2}  "
                       f"RoCE NICs {cap.get('rdma/roce', '0'):>2}")

    def devices(self) -> None:
        self.p.step("the real node's devices: hgx-h100 fixture sysfs, its 8 NICs on veths; device plugins")
        build_fixture("hgx-h100", self.sysfs)
        for nic in discover(str(self.sysfs), node_name=self.lay.node_name).nics:
            point_netdev(self.sysfs, nic.pci_address, self.lab.nic(f"n{len(self.lab.links)}"))
        topo = discover(str(self.sysfs), node_name=self.lay.node_name)
        self.p.say(f"{len(topo.gpus)} GPUs, NICs {', '.join(n.name for n in topo.nics)} (veths)")
        for resource, ids in (("nvidia.com/gpu", [f"gpu-{i}" for i in range(len(topo.gpus))]),
                              ("rdma/roce", [n.name for n in topo.nics])):
            plugin = DevicePlugin(self.lay.kubelet_root, resource, ids)
            plugin.start()
            self.plugins.append(plugin)

        def advertised() -> bool:
            cap = self.api().get(f"/api/v1/nodes/{self.lay.node_name}")["status"].get("allocatable", {})
            return bool(cap.get("nvidia.com/gpu") == str(len(topo.gpus)) and cap.get("rdma/roce") == str(len(topo.nics)))

        wait(advertised, 60, "the kubelet advertising nvidia.com/gpu and rdma/roce")
        self.p.say("kubelet advertises nvidia.com/gpu 8, rdma/roce 8 on the real node")

    def image(self) -> None:
        self.p.step("railnet image: build (cached layers) and import into the real node's containerd")
        t0 = time.monotonic()
        self.img = railnet_image.build(log=lambda msg: None)
        built = time.monotonic() - t0
        t0 = time.monotonic()
        images.import_image(self.img, k8sbin.binary("ctr"), self.lay.socket)
        self.p.say(f"{self.img.ref}: build {built:.1f}s, import {time.monotonic() - t0:.1f}s, "
                   f"{self.img.archive.stat().st_size / 1e6:.0f} MB")

    def install(self) -> None:
        self.p.step("helm chart deploy/helm/railnet: node DaemonSet, controller, scheduler, rails, pools")
        self.kubectl("create", "namespace", NS)
        wait(lambda: self.api().request("GET", f"/api/v1/namespaces/{NS}/serviceaccounts/default")[0] == 200, 60,
             f"ServiceAccount {NS}/default")
        values = cj.chart_values(self.img.ref, self.lay, self.socket_dir / "agent.sock",
                                 self.lay.dir / "railnet-state", self.ports)
        values_file = self.tmp / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        crds = chart.template("--values", str(values_file), values=None, include_crds=True)
        docs = [d for d in yaml.safe_load_all(crds) if d]
        server = urllib.parse.urlsplit(yaml.safe_load(self.dev.kubeconfig.read_text())["clusters"][0]["cluster"]
                                       ["server"])
        assert server.hostname and server.port
        cj.patch_for_dev_cluster(docs, server.hostname, server.port, self.sysfs)
        first = [d for d in docs if d["kind"] in ("CustomResourceDefinition", "Namespace")]
        rest = [d for d in docs if d not in first]
        self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(first))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(rest))
        kinds: dict[str, int] = {}
        for d in rest:
            kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        self.p.say(f"applied {len(first)} CRDs/namespaces and " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())))
        kwok = [f"kwok-gpu-{i}" for i in range(self.kwok_nodes)]
        kwok_topology.publish(self.dev.api(), kwok)  # kwok nodes have no agent: their topology from the fixture

        def ready() -> bool:
            for kind, name in (("daemonsets", "railnet-node"), ("deployments", "railnet-controller"),
                               ("deployments", "railnet-scheduler")):
                s = self.api().get(f"/apis/apps/v1/namespaces/{SYSTEM}/{kind}/{name}").get("status") or {}
                if not (s.get("numberReady") or s.get("readyReplicas")):
                    return False
            return True

        try:
            wait(ready, 300, "railnet-node, railnet-controller and railnet-scheduler Ready", interval=2)
        except DemoError as exc:
            raise DemoError(f"{exc}\n{self.diagnose(SYSTEM)}") from None
        path = f"/apis/railnet.io/v1alpha1/nodetopologies/{self.lay.node_name}"

        def published() -> dict[str, Any] | None:
            code, obj = self.api().request("GET", path)
            return obj if code == 200 else None

        topo = wait(published, 120, "the agent publishing the real node's NodeTopology")
        if not topo["spec"].get("nics"):
            raise DemoError(f"the agent published NodeTopology {self.lay.node_name} without NICs: it did not read "
                            f"the fixture sysfs {self.sysfs}")
        for p in self.pods(SYSTEM):
            self.p.say(f"{p['metadata']['name']:<40} {p['status'].get('phase')} on {p['spec'].get('nodeName')}")
        self.p.say(f"NodeTopology {self.lay.node_name} (published by the agent): {len(topo['spec']['gpus'])} GPUs, "
                   f"{len(topo['spec']['nics'])} NICs; kwok nodes: {', '.join(kwok)}")

    def run_jobs(self) -> None:
        self.p.step("jobs: host-network TFJob (PS + 2 workers) and PyTorchJob with two RoCE rails on the real "
                    "node; a PyTorchJob of 2 x 8 GPUs on the kwok nodes")
        self.api().call("POST", f"/api/v1/namespaces/{NS}/configmaps", cj.programs_configmap())
        real = {node.REAL_NODE_LABEL: "true"}
        self.jobs = [("TFJob", api.KUBEDL, "tfjobs", cj.tfjob("27500-27515")),
                     ("PyTorchJob", api.KUBEFLOW, "pytorchjobs",
                      cj.pytorchjob("pt", 1, 2, 2, real, rounds=60 if self.fail_over else cj.ROUNDS)),
                     ("PyTorchJob", api.KUBEFLOW, "pytorchjobs", cj.pytorchjob("big", 1, 8, 8, {"type": "kwok"}))]
        t0 = time.monotonic()
        for kind, group, plural, body in self.jobs:
            self.api().call("POST", api.resource_path(group, plural, NS), body)
            self.p.say(f"created {kind} {body['metadata']['name']}")
        expected = {"tf-ps-0", "tf-worker-0", "tf-worker-1", "pt-master-0", "pt-worker-0", "big-master-0",
                    "big-worker-0"}
        seen: dict[str, str] = {}

        def all_running() -> list[dict[str, Any]] | None:
            pods = {p["metadata"]["name"]: p for p in self.pods(NS)}
            for name, pod in sorted(pods.items()):
                phase = pod["status"].get("phase", "Pending")
                where = pod["spec"].get("nodeName") or "unbound"
                if seen.get(name) != f"{phase}/{where}":
                    seen[name] = f"{phase}/{where}"
                    self.p.say(f"{time.monotonic() - t0:6.1f}s  {name:<14} {phase:<9} {where}")
                if phase == "Failed":
                    raise DemoError(f"pod {name} failed: {json.dumps(pod['status'])[:1500]}")
            ok = expected <= set(pods) and all(pods[n]["status"].get("phase") in ("Running", "Succeeded")
                                               for n in expected)
            return [pods[n] for n in sorted(expected)] if ok else None

        try:
            running = wait(all_running, 300, f"pods {sorted(expected)} running", interval=1)
        except DemoError as exc:
            raise DemoError(f"{exc}\n{self.diagnose(NS)}") from None
        def with_status() -> list[dict[str, Any]] | None:  # the agent writes network-status after the ADD
            pods = {p["metadata"]["name"]: p for p in self.pods(NS)}
            railed = [pods[n] for n in sorted(expected) if n in pods and not pods[n]["spec"].get("hostNetwork")
                      and pods[n]["spec"].get("nodeName") == self.lay.node_name]
            if all(cj.NETWORK_STATUS in (p["metadata"].get("annotations") or {}) for p in railed):
                return [pods.get(n, running[i]) for i, n in enumerate(sorted(expected))]
            return None

        try:
            running = wait(with_status, 30, "network-status on the pods of the real node", interval=0.5)
        except DemoError as exc:
            self.failures.append(str(exc))
        print("\n" + cj.table([cj.pod_row(p) for p in running]) + "\n", flush=True)
        self.running_at = time.monotonic() - t0
        if self.fail_over:
            self.lose_worker({p["metadata"]["name"]: p for p in running}["pt-worker-0"])

    def lose_worker(self, old: dict[str, Any]) -> None:
        """Delete pt-worker-0 mid-run (a drain): the controller replaces it, the replacement gets new rails."""
        wait(lambda: "round 5 sum" in self.log("pt-worker-0"), 60, "pt-worker-0 at round 5")
        t0 = time.monotonic()
        self.api().call("DELETE", f"/api/v1/namespaces/{NS}/pods/pt-worker-0")
        self.p.say("deleted pt-worker-0 mid-run (after round 5)")

        def replaced() -> dict[str, Any] | None:
            code, pod = self.api().request("GET", f"/api/v1/namespaces/{NS}/pods/pt-worker-0")
            ok = code == 200 and pod["metadata"]["uid"] != old["metadata"]["uid"] and \
                pod["status"].get("phase") == "Running" and cj.NETWORK_STATUS in (pod["metadata"].get("annotations") or {})
            return pod if ok else None

        new = wait(replaced, 120, "pt-worker-0 replaced and running with its rails", interval=0.5)
        resumed = wait(lambda: next((ln for ln in self.log("pt-worker-0").splitlines() if "resuming at round" in ln),
                                    None), 60, "the replacement rejoining")
        self.p.say(f"replacement running after {time.monotonic() - t0:.1f}s: {' | '.join(cj.pod_row(new)[1:6])}")
        self.p.say(f"pt-worker-0: {resumed.split('; ')[-1]}")

    def outcome(self) -> None:
        self.p.step("the jobs' outcome")
        t0 = time.monotonic()

        def finished() -> dict[str, str] | None:
            states = {}
            for kind, group, plural, body in self.jobs[:2]:
                job = self.api().get(api.resource_path(group, plural, NS, body["metadata"]["name"]))
                states[f"{kind} {body['metadata']['name']}"] = cj.condition(job)
            return states if all(s in ("Succeeded", "Failed") for s in states.values()) else None

        try:
            states = wait(finished, 300, "the TFJob and the PyTorchJob on the real node to finish", interval=1)
        except DemoError as exc:
            raise DemoError(f"{exc}\n{self.diagnose(NS)}") from None
        for (name, state), leader in zip(states.items(), ("tf-ps-0", "pt-master-0"), strict=True):
            result = next((ln for ln in self.log(leader).splitlines() if ln.startswith("RESULT ")), "")
            summary = json.loads(result[len("RESULT "):]) if result else {}
            if isinstance(summary.get("rounds"), dict):  # the PS: every round of every worker applied
                what = ", ".join(f"worker {w}: {len(r)} rounds" for w, r in sorted(summary["rounds"].items()))
            else:  # the master: every round holds every rank's value
                joins = ", ".join(f"rank {r} joined {n}x" for r, n in sorted((summary.get("hellos") or {}).items()))
                what = f"world {summary.get('world')}, all rounds complete: {summary.get('complete')}, {joins}"
            self.p.say(f"{name}: {state} ({time.monotonic() - t0 + self.running_at:.0f}s after creation); "
                       f"{leader}: ok={summary.get('ok')}, {what}")
            if state != "Succeeded" or not summary.get("ok"):
                self.failures.append(f"{name} {state}: {result or self.log(leader)[-800:]}")
        big = self.api().get(api.resource_path(api.KUBEFLOW, "pytorchjobs", NS, "big"))
        self.p.say(f"PyTorchJob big: {cj.condition(big)} on kwok nodes (simulated: kwok runs no container)")

    def log(self, pod: str) -> str:
        code, text = self.api().request("GET", f"/api/v1/namespaces/{NS}/pods/{pod}/log")
        return text if code == 200 and isinstance(text, str) else ""

    def diagnose(self, ns: str) -> str:
        out = []
        for p in self.pods(ns):
            st = p.get("status") or {}
            out.append(f"  {p['metadata']['name']}: {st.get('phase')} on {p['spec'].get('nodeName')} "
                       f"{[(c['name'], c.get('state')) for c in st.get('containerStatuses') or []]}"[:600])
        events = self.api().get(f"/api/v1/namespaces/{ns}/events")["items"]
        out += [f"  event {e['involvedObject']['name']}: {e['reason']}: {e.get('message', '')[:300]}"
                for e in events[-15:]]
        return "\n".join(out)

    def rail_addresses(self) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.ports['node']}/metrics", timeout=10).read().decode()
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.startswith("railnet_ipam_allocated_addresses"))

    def teardown(self) -> None:
        self.p.step("teardown: jobs deleted (CNI DEL releases the rails), cluster down, leak check", at=STEPS)
        leaks: list[str] = []
        if self.dev.state() and hasattr(self, "jobs"):
            try:
                for _, group, plural, body in getattr(self, "jobs", []):
                    self.api().request("DELETE", api.resource_path(group, plural, NS, body["metadata"]["name"]) +
                                       "?propagationPolicy=Foreground")
                wait(lambda: not self.pods(NS), 180, f"the pods of {NS} gone", interval=1)
                wait(lambda: self.rail_addresses() == 0, 60, "every rail address released", interval=1)
                self.p.say("pods gone; rail addresses held by the agent: 0 (railnet_ipam_allocated_addresses)")
            except Exception as exc:  # report, then tear down regardless
                leaks.append(f"before teardown: {exc}")
        for plugin in self.plugins:
            plugin.stop()
        self.kube = None
        self.dev.down(log=lambda msg: None)
        leaks += node.leftovers(self.lay, self.before) if hasattr(self, "before") else []
        leaks += self.lab.close()
        if self.dev.dir.exists():
            leaks.append(f"cluster dir {self.dev.dir}")
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        leftover_links = [ln for ln in os.listdir("/sys/class/net") if ln.startswith(self.lab.prefix)]
        leaks += [f"link {ln}" for ln in leftover_links]
        self.p.say("left on the machine: " + ("; ".join(leaks) if leaks else
                                               "nothing (processes, mounts, cgroups, bridge, shim sockets, "
                                               "iptables, nft tables, veths, state dirs all gone)"))
        self.failures += [f"leak: {x}" for x in leaks]

    def run(self) -> int:
        ok = False
        try:
            self.cluster()
            self.devices()
            self.image()
            self.install()
            self.run_jobs()
            self.outcome()
            ok = not self.failures
        except (DemoError, Exception) as exc:  # noqa: BLE001 — every failure ends the demo with its reason
            self.failures.append(f"step {self.p.n} failed: {exc}")
        except KeyboardInterrupt:
            self.failures.append(f"interrupted in step {self.p.n}")
        finally:
            try:
                self.teardown()
            finally:
                self.p.done()
        total = time.monotonic() - self.p.t0
        if ok and not self.failures:
            print(f"cluster demo passed in {total:.0f}s: chart installed, jobs succeeded, nothing leaked", flush=True)
            return 0
        print(f"cluster demo FAILED after {total:.0f}s:", *self.failures, sep="\n  ", file=sys.stderr, flush=True)
        return 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet cluster-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kwok-nodes", type=int, default=2, help="kwok GPU nodes beside the real node (default 2)")
    parser.add_argument("--no-fail-over", action="store_true",
                        help="do not delete a PyTorchJob worker mid-run (its replacement gets new rails)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("railnet cluster-demo: needs root (a real kubelet + containerd node, veths)", file=sys.stderr)
        return 1
    if missing := k8sbin.missing():
        print(f"railnet cluster-demo: Kubernetes binaries missing ({', '.join(missing)}): run `make k8s-bin`",
              file=sys.stderr)
        return 1
    images.build_all(log=lambda msg: None)  # the pause and test images (cached)
    return Demo(args.kwok_nodes, fail_over=not args.no_fail_over).run()


if __name__ == "__main__":
    sys.exit(main())
