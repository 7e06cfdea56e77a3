"""railnet installed the way a platform team installs it: the chart's DaemonSet railnet-node on the real node,
running the railnet image built here (railnet.dev.railnet_image) and imported into the node's containerd.

The chart is rendered with `helm template` (railnet.dev.chart) for the node component only, then applied;
the dev node's paths go in as values (its private CNI dirs, kubelet dir, a socket and state dir of its own),
and the API server's own address (it listens on 127.0.0.1 here) as the agent's KUBERNETES_SERVICE_HOST/PORT.

In order (one module, one cluster): install → the DaemonSet is Ready, the shim and conflist are on the node,
a pod with a networks annotation gets eth0 plus its rail, the metrics move; a rolling update while pods are
being created (no sandbox fails); a missing primary conflist (the new pod's init step fails, saying what to
fix; the old agent keeps serving and the CNI dirs are unchanged); uninstall (the CNI dirs as before install).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic

from cni import install
from cni.meta import netconf
from netmanager import probe
from railnet.dev import chart, images, k8sbin, node, railnet_image
from railnet.dev.lab import Lab
from tests.kube import kubeutil
from tests.node import helpers as h
from tests.node.conftest import RealNode
from tests.node.test_meta_on_node import RAILS, addresses, make_nads, with_rails

NS = "railnet-system"
PRIMARY = "10-railnet-primary.conflist"
pytestmark = pytest.mark.timeout(900)  # the first test builds the image (minutes when the sources changed)


def snapshot(*dirs: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for d in dirs for p in sorted(d.iterdir()) if p.is_file()}


class Installed:
    """The chart's node component applied to the real node, and how to change or remove it."""

    def __init__(self, rn: RealNode, image: images.Image, lab: Lab) -> None:
        self.rn, self.image, self.lab = rn, image, lab
        self.dyn = dynamic.DynamicClient(rn.api_client)
        self.apps = client.AppsV1Api(rn.api_client)
        self.tag = uuid.uuid4().hex[:8]
        self.socket_dir = Path("/run/railnet") / f"install-test-{self.tag}"  # the shim follows only /run/railnet/
        self.state_dir = rn.layout.dir / f"railnet-state-{self.tag}"
        with socketlike() as port:
            self.metrics_port = port
        self.before = snapshot(rn.layout.cni_bin, rn.layout.cni_conf)
        self.nics = {rail: lab.nic(rail[-1]) for rail in RAILS}

    def render(self, primary: str = PRIMARY, rollout: str = "1") -> list[dict[str, Any]]:
        lay = self.rn.layout
        repo, tag = self.image.ref.rsplit(":", 1)
        # node.apiServer: the dev API server listens on 127.0.0.1 and the node's kube-proxy does not route
        # host-network traffic for the kubernetes Service to it
        server = urllib.parse.urlsplit(yaml.safe_load(self.rn.cluster.kubeconfig.read_text())["clusters"][0]
                                       ["cluster"]["server"])
        values = {
            "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
            "components": {"node": True, "dra": False, "controller": False, "scheduler": False, "ipam": False},
            "cni": {"primaryConflist": primary, "binDir": str(lay.cni_bin), "confDir": str(lay.cni_conf)},
            "node": {"socket": str(self.socket_dir / "agent.sock"), "stateDir": str(self.state_dir),
                     "kubeletDir": str(lay.kubelet_root), "cdiDir": str(lay.cdi_dir),
                     "metricsPort": self.metrics_port, "publishTopologySeconds": 60,
                     "apiServer": {"host": server.hostname, "port": server.port},
                     "nodeSelector": {node.REAL_NODE_LABEL: "true"}},
        }
        values_file = self.state_dir.parent / f"values-{self.tag}.yaml"
        values_file.write_text(yaml.safe_dump(values))
        docs = [d for d in yaml.safe_load_all(chart.template("--values", str(values_file), values=None,
                                                             include_crds=False)) if d]
        values_file.unlink()
        for doc in docs:  # a changed pod template rolls the DaemonSet
            if doc["kind"] == "DaemonSet":
                doc["spec"]["template"]["metadata"].setdefault("annotations", {})["railnet.io/test-rollout"] = rollout
        return docs

    def apply(self, **kw: str) -> None:
        kubeutil.apply(self.dyn, self.render(**kw))

    def daemonset(self) -> client.V1DaemonSet:
        return self.apps.read_namespaced_daemon_set("railnet-node", NS)

    def rolled_out(self, timeout: float = 300) -> None:
        def done() -> bool:
            ds = self.daemonset()
            s = ds.status
            return bool(s.observed_generation == ds.metadata.generation and s.updated_number_scheduled == 1
                        and s.number_ready == 1 and s.number_available == 1 and s.desired_number_scheduled == 1
                        and len(self.agent_pods()) == 1)

        try:
            kubeutil.wait_for(done, timeout, "DaemonSet railnet-node rolled out and Ready", interval=1)
        except AssertionError:
            raise AssertionError(f"not rolled out: {self.daemonset().status}\n{self.diagnose()}") from None

    def agent_pods(self) -> list[client.V1Pod]:
        return [p for p in self.rn.core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/component=node").items
                if p.metadata.deletion_timestamp is None]

    def diagnose(self) -> str:
        out = []
        for p in self.rn.core.list_namespaced_pod(NS).items:
            out.append(f"{p.metadata.name}: {p.status.phase} {[(c.name, c.state) for c in p.status.init_container_statuses or []]}"
                       f" {[(c.name, c.ready, c.state) for c in p.status.container_statuses or []]}")
            for c in ("install-cni", "agent"):
                logs = self.rn.kubectl("-n", NS, "logs", p.metadata.name, "-c", c, "--tail=30", check=False)
                out.append(f"--- {c}: {logs.stdout[-3000:]}{logs.stderr[-500:]}")
        events = self.rn.core.list_namespaced_event(NS).items
        out += [f"{e.involved_object.name}: {e.reason}: {e.message}" for e in events[-15:]]
        return "\n".join(out)

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                if ln and not ln.startswith("#")}

    def uninstall(self) -> None:
        """Delete the DaemonSet (its agent removes its socket), then `install-cni --uninstall` on the node."""
        with contextlib.suppress(client.ApiException):
            self.apps.delete_namespaced_daemon_set("railnet-node", NS)
        kubeutil.wait_for(lambda: not self.rn.core.list_namespaced_pod(NS).items, 120, "railnet-node pods gone",
                          interval=1)
        lay = self.rn.layout
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"railnet-uninstall-{self.tag}"},
               "spec": {"nodeSelector": {node.REAL_NODE_LABEL: "true"}, "restartPolicy": "Never",
                        "hostNetwork": True,  # railnet is the node's CNI until this pod has run
                        "containers": [{"name": "uninstall", "image": self.image.ref, "imagePullPolicy": "Never",
                                        "args": ["install-cni", "--uninstall", f"--dest={lay.cni_bin}",
                                                 f"--conf-dir={lay.cni_conf}"],
                                        "securityContext": {"runAsUser": 0, "runAsNonRoot": False,
                                                            "allowPrivilegeEscalation": False,
                                                            "capabilities": {"drop": ["ALL"]}},
                                        "volumeMounts": [{"name": "bin", "mountPath": str(lay.cni_bin)},
                                                         {"name": "conf", "mountPath": str(lay.cni_conf)}]}],
                        "volumes": [{"name": "bin", "hostPath": {"path": str(lay.cni_bin)}},
                                    {"name": "conf", "hostPath": {"path": str(lay.cni_conf)}}]}}
        name = pod["metadata"]["name"]
        self.rn.core.create_namespaced_pod(NS, pod)

        def finished() -> str | None:
            phase = self.rn.core.read_namespaced_pod(name, NS).status.phase
            return phase if phase in ("Succeeded", "Failed") else None

        phase = kubeutil.wait_for(finished, 180, "the uninstall pod finished", interval=1)
        logs = self.rn.kubectl("-n", NS, "logs", name).stdout
        self.rn.core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
        assert phase == "Succeeded", logs

    def remove_rest(self) -> None:
        for kind, name in (("ClusterRoleBinding", "railnet-node"), ("ClusterRole", "railnet-node"),
                           ("ValidatingAdmissionPolicyBinding", "railnet-node-own-objects"),
                           ("ValidatingAdmissionPolicy", "railnet-node-own-objects")):
            group = "admissionregistration.k8s.io/v1" if "Admission" in kind else "rbac.authorization.k8s.io/v1"
            with contextlib.suppress(Exception):
                self.dyn.resources.get(api_version=group, kind=kind).delete(name=name)
        with contextlib.suppress(client.ApiException):
            self.rn.core.delete_namespace(NS, grace_period_seconds=0)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


@contextlib.contextmanager
def socketlike() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


@pytest.fixture(scope="module")
def image(real_node: RealNode) -> images.Image:
    started = time.monotonic()
    img = railnet_image.build(log=lambda msg: print(msg, flush=True))
    built = time.monotonic() - started
    started = time.monotonic()
    images.import_image(img, k8sbin.binary("ctr"), real_node.layout.socket)
    print(f"railnet image {img.ref}: build {built:.0f}s (cached layers reused), import {time.monotonic() - started:.0f}s, "
          f"{img.archive.stat().st_size / 1e6:.0f} MB", flush=True)
    return img


@pytest.fixture(scope="module")
def installed(real_node: RealNode, image: images.Image) -> Iterator[Installed]:
    dyn = dynamic.DynamicClient(real_node.api_client)
    kubeutil.apply(dyn, kubeutil.load(sorted((kubeutil.DEPLOY / "crds").glob("*.yaml"))))
    with Lab("rni") as lab:
        inst = Installed(real_node, image, lab)
        try:
            inst.apply()
            inst.rolled_out()
            yield inst
        finally:
            failure = None
            if (real_node.layout.cni_bin / "railnet").exists():  # a test failed before uninstalling
                try:
                    inst.uninstall()
                except Exception as exc:  # still leave the node's CNI dirs as they were
                    failure = exc
                    install.main(["--uninstall", "--dest", str(real_node.layout.cni_bin),
                                  "--conf-dir", str(real_node.layout.cni_conf)])
            inst.remove_rest()
            if failure is not None:
                raise failure


def test_the_daemonset_installs_railnet_and_a_pod_gets_its_rails(installed: Installed, ns: str) -> None:
    rn, lay = installed.rn, installed.rn.layout
    # the shim (static: no Python on the host) under every plugin name, and our conflist first
    for name in install.PLUGIN_NAMES:
        path = lay.cni_bin / name
        assert path.is_file() and path.stat().st_mode & 0o111, path
        assert b"/lib64/ld-linux" not in path.read_bytes()[:4096], f"{path} is dynamically linked"
    ours = json.loads((lay.cni_conf / netconf.META_FILE).read_text())
    assert ours["plugins"][0]["clusterNetwork"] == "railnet-primary"
    assert ours["plugins"][0]["agentSocket"] == str(installed.socket_dir / "agent.sock")
    assert sorted(p.name for p in lay.cni_conf.iterdir())[0] == netconf.META_FILE
    assert (lay.cni_conf / PRIMARY).read_bytes() == installed.before[str(lay.cni_conf / PRIMARY)]

    make_nads(rn, ns, installed.nics)
    rn.core.create_namespaced_pod(ns, with_rails(h.sleeper("railed")))
    pod = h.running(rn.core, ns, "railed")
    ips = addresses(rn, ns, "railed")
    assert sorted(ips) == ["eth0", "net1", "net2"], ips
    assert ips["eth0"] == pod.status.pod_ip
    assert h.in_pod_cidr(ips["net1"], RAILS["rail0"]) and h.in_pod_cidr(ips["net2"], RAILS["rail1"])

    topology = client.CustomObjectsApi(rn.api_client).get_cluster_custom_object(
        "railnet.io", "v1alpha1", "nodetopologies", rn.name)  # published by the agent, through its own RBAC
    assert topology["metadata"]["name"] == rn.name

    series = installed.metrics()
    added = 'railnet_cni_requests_total{code="0",command="ADD",plugin="railnet"}'
    assert series.get(added, 0) >= 1, {k: v for k, v in series.items() if "cni_requests_total" in k}
    assert sum(v for k, v in series.items() if k.startswith("railnet_ipam_allocated_addresses")) >= 2
    rn.core.create_namespaced_pod(ns, h.sleeper("plain"))
    h.running(rn.core, ns, "plain")
    assert installed.metrics()[added] == series[added] + 1  # the series move with each sandbox
    for name in ("railed", "plain"):
        rn.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    for name in ("railed", "plain"):
        h.gone(rn.core, ns, name)


def test_a_rolling_update_while_pods_are_created_fails_no_cni_call(installed: Installed, ns: str) -> None:
    rn = installed.rn
    make_nads(rn, ns, installed.nics)
    old = {p.metadata.name for p in installed.agent_pods()}
    created: list[str] = []
    stop = threading.Event()

    def create() -> None:
        i = 0
        while not stop.is_set() and i < 25:
            name = f"roll-{i}"
            rn.core.create_namespaced_pod(ns, with_rails(h.sleeper(name)))
            created.append(name)
            i += 1
            time.sleep(1.0)

    socket_path = installed.socket_dir / "agent.sock"
    answered: list[float] = []
    unanswered: list[str] = []

    def call_the_socket() -> None:  # what every shim would see, 20 times a second
        while not stop.is_set():
            try:
                answered.append(probe.round_trip(socket_path, timeout=30))
            except probe.ProbeError as exc:
                unanswered.append(str(exc))
            time.sleep(0.05)

    creator, caller = threading.Thread(target=create), threading.Thread(target=call_the_socket)
    creator.start()
    caller.start()
    try:
        time.sleep(3)
        installed.apply(rollout="2")  # a new pod template: the DaemonSet rolls
        installed.rolled_out()
        time.sleep(3)
    finally:
        stop.set()
        creator.join()
        caller.join()
    assert not unanswered, (unanswered[:5], len(answered))
    print(f"rolling update: {len(answered)} socket round trips, none refused; slowest {max(answered):.2f}s",
          flush=True)
    assert not old & {p.metadata.name for p in installed.agent_pods()}, "the agent pod was not replaced"
    for name in created:
        h.running(rn.core, ns, name, timeout=240)
    events = rn.core.list_namespaced_event(ns).items
    failed = [(e.involved_object.name, e.message) for e in events if e.reason == "FailedCreatePodSandBox"]
    assert not failed, failed[:5]
    assert len(created) >= 5
    for name in created:
        rn.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    for name in created:
        h.gone(rn.core, ns, name, timeout=240)


def test_a_missing_primary_conflist_fails_the_init_step_and_changes_nothing(installed: Installed, ns: str) -> None:
    rn, lay = installed.rn, installed.rn.layout
    working = snapshot(lay.cni_bin, lay.cni_conf)
    serving = {p.metadata.name for p in installed.agent_pods()}
    installed.apply(primary="99-missing.conflist", rollout="3")

    def init_failure() -> str | None:
        for p in installed.agent_pods():
            for c in p.status.init_container_statuses or []:
                term = c.state.terminated or c.last_state.terminated
                if c.name == "install-cni" and term is not None and term.exit_code != 0:
                    return str(p.metadata.name)
        return None

    failing = kubeutil.wait_for(init_failure, 180, "the new pod's install-cni to fail", interval=1)
    logs = rn.kubectl("-n", NS, "logs", failing, "-c", "install-cni", "--previous", check=False).stdout or \
        rn.kubectl("-n", NS, "logs", failing, "-c", "install-cni").stdout
    assert "99-missing.conflist does not exist" in logs and "primaryConflist" in logs, logs
    assert snapshot(lay.cni_bin, lay.cni_conf) == working  # the node's CNI config as it was
    assert serving <= {p.metadata.name for p in installed.agent_pods()}  # maxUnavailable 0: the old one serves
    rn.core.create_namespaced_pod(ns, h.sleeper("still-works"))
    h.running(rn.core, ns, "still-works")
    installed.apply(rollout="4")  # fixed: the rollout completes
    installed.rolled_out()
    rn.core.delete_namespaced_pod("still-works", ns, grace_period_seconds=0)
    h.gone(rn.core, ns, "still-works")


def test_uninstall_leaves_the_nodes_cni_dirs_as_before(installed: Installed, ns: str) -> None:
    rn, lay = installed.rn, installed.rn.layout
    installed.uninstall()
    assert snapshot(lay.cni_bin, lay.cni_conf) == installed.before
    assert not (installed.socket_dir / "agent.sock").exists()  # the agent removed its socket on SIGTERM
    rn.core.create_namespaced_pod(ns, h.sleeper("after"))  # the node's own network works as before
    h.running(rn.core, ns, "after")
    rn.core.delete_namespaced_pod("after", ns, grace_period_seconds=0)
    h.gone(rn.core, ns, "after")
