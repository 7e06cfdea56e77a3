"""The chart's controller and scheduler Deployments on the real node (issue 14, "Tests (on the real node)").

The chart is rendered (railnet.dev.chart) with only `controller` and `scheduler`, two replicas each, the
railnet image built here (`pullPolicy: Never`), and applied to the dev cluster; on a one-node cluster both
replicas of each run on the real node (the anti-affinity is only preferred). No node agent: the jobs here
need no rails, their pods get the node's primary network.

What the dev cluster needs beyond the chart's values (the chart has no value for it):

* the API server listens on 127.0.0.1 only, which only host-network pods reach, so the Deployments run with
  `hostNetwork` and KUBERNETES_SERVICE_HOST/PORT (railnet.dev.cluster_demo_jobs.patch_for_dev_cluster, as
  `make cluster-demo` does);
* two host-network replicas on one node cannot share the metrics port (and a declared containerPort of a
  host-network pod is a host port, which keeps the second replica Pending), so the container's port and
  its TCP probes are dropped and each replica picks a free metrics port at start (`shuf`); the test reads
  it from the replica's command line in /proc (the replicas are processes on this machine).

Then, in order: the metrics of both leaders move when a job runs (`railnet_jobs_creates_total`,
`railnet_jobs{phase=...}`, `railnet_scheduler_binds_total`), and the controller's leader pod deleted while a
PyTorchJob runs: the other replica takes the Lease, the job Succeeds, each replica's pod created once.
"""

from __future__ import annotations

import contextlib
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
from kubernetes import client, dynamic, watch

from jobs import api
from railnet.dev import chart, images, k8sbin, node, railnet_image
from railnet.dev import cluster_demo_jobs as cj
from tests.kube import kubeutil
from tests.node.conftest import RealNode

NS = "railnet-system"
JSON = dict[str, Any]
pytestmark = pytest.mark.timeout(900)  # the first test may build the image (minutes when the sources changed)

WRAPPER = 'exec python3 -m railnet.cli "$@" --metrics-port=$(shuf -i 30000-39999 -n 1)'


class Installed:
    """The chart's controller and scheduler applied to the real-node cluster."""

    def __init__(self, rn: RealNode, image: images.Image) -> None:
        self.rn, self.image = rn, image
        self.dyn = dynamic.DynamicClient(rn.api_client)
        self.apps = client.AppsV1Api(rn.api_client)
        self.coord = client.CoordinationV1Api(rn.api_client)
        self.custom = client.CustomObjectsApi(rn.api_client)
        self.docs: list[JSON] = []

    def render(self) -> list[JSON]:
        repo, tag = self.image.ref.rsplit(":", 1)
        real = {node.REAL_NODE_LABEL: "true"}
        values = {
            "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
            "components": {"node": False, "dra": False, "controller": True, "scheduler": True, "ipam": False},
            "controller": {"replicas": 2, "nodeSelector": real},
            "scheduler": {"replicas": 2, "nodeSelector": real},
        }
        values_file = self.rn.cluster.dir / f"values-controllers-{uuid.uuid4().hex[:8]}.yaml"
        values_file.write_text(yaml.safe_dump(values))
        try:
            docs = [d for d in yaml.safe_load_all(chart.template("--values", str(values_file), values=None,
                                                                 include_crds=True)) if d]
        finally:
            values_file.unlink()
        server = urllib.parse.urlsplit(yaml.safe_load(self.rn.cluster.kubeconfig.read_text())["clusters"][0]
                                       ["cluster"]["server"])
        assert server.hostname and server.port
        cj.patch_for_dev_cluster(docs, server.hostname, server.port, Path("/nonexistent"))  # no DaemonSet here
        for doc in docs:
            if doc["kind"] != "Deployment":
                continue
            c = doc["spec"]["template"]["spec"]["containers"][0]
            for key in ("ports", "readinessProbe", "livenessProbe"):
                c.pop(key, None)
            c["command"] = ["/bin/sh", "-c", WRAPPER, "sh"]
            c["args"] = [a for a in c["args"] if not a.startswith("--metrics-port=")]
        return docs

    def apply(self) -> None:
        self.docs = self.render()
        first = [d for d in self.docs if d["kind"] in ("CustomResourceDefinition", "Namespace")]
        kubeutil.apply(self.dyn, first)
        kubeutil.apply(self.dyn, [d for d in self.docs if d not in first])

    def pods(self, component: str) -> list[client.V1Pod]:
        return [p for p in self.rn.core.list_namespaced_pod(
            NS, label_selector=f"app.kubernetes.io/component={component}").items
            if p.metadata.deletion_timestamp is None]

    def ready(self, timeout: float = 300) -> None:
        def done() -> bool:
            for name in ("railnet-controller", "railnet-scheduler"):
                s = self.apps.read_namespaced_deployment(name, NS).status
                if (s.ready_replicas or 0) != 2 or (s.replicas or 0) != 2:
                    return False
            return all(self.metrics_port(p.metadata.name) for c in ("controller", "scheduler") for p in self.pods(c))

        try:
            kubeutil.wait_for(done, timeout, "railnet-controller and railnet-scheduler 2/2 Ready", interval=1)
        except AssertionError:
            raise AssertionError(f"not Ready:\n{self.diagnose()}") from None

    def holder(self, component: str) -> str | None:
        with contextlib.suppress(client.ApiException):
            return self.coord.read_namespaced_lease(f"railnet-{component}", NS).spec.holder_identity or None
        return None

    def metrics_port(self, pod: str) -> int | None:
        """The replica's metrics port, from its process's command line (`--identity=<pod>`)."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if f"--identity={pod}" in argv and "railnet.cli" in argv:
                ports = [a.split("=", 1)[1] for a in argv if a.startswith("--metrics-port=")]
                if ports:
                    return int(ports[-1])
        return None

    def metrics(self, pod: str) -> dict[str, float]:
        port = self.metrics_port(pod)
        assert port, f"no railnet process for pod {pod}"
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                if ln and not ln.startswith("#")}

    def diagnose(self) -> str:
        out = []
        for p in self.rn.core.list_namespaced_pod(NS).items:
            out.append(f"{p.metadata.name}: {p.status.phase} on {p.spec.node_name} "
                       f"{[(c.name, c.ready, c.state) for c in p.status.container_statuses or []]}")
            logs = self.rn.kubectl("-n", NS, "logs", p.metadata.name, "--tail=30", check=False)
            out.append(f"--- {logs.stdout[-3000:]}{logs.stderr[-500:]}")
        events = self.rn.core.list_namespaced_event(NS).items
        out += [f"{e.involved_object.name}: {e.reason}: {e.message}" for e in events[-15:]]
        return "\n".join(out)

    def remove(self) -> None:
        for doc in reversed(self.docs):
            if doc["kind"] in ("CustomResourceDefinition", "Namespace"):
                continue
            with contextlib.suppress(Exception):
                res = self.dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
                res.delete(name=doc["metadata"]["name"], namespace=doc["metadata"].get("namespace")
                           if res.namespaced else None)
        kubeutil.wait_for(lambda: not self.rn.core.list_namespaced_pod(NS).items, 120,
                          "railnet-controller and railnet-scheduler pods gone", interval=1)
        with contextlib.suppress(client.ApiException):
            self.rn.core.delete_namespace(NS, grace_period_seconds=0)


@pytest.fixture(scope="module")
def image(real_node: RealNode) -> images.Image:
    img = railnet_image.build(log=lambda msg: print(msg, flush=True))
    images.import_image(img, k8sbin.binary("ctr"), real_node.layout.socket)
    return img


@pytest.fixture(scope="module")
def installed(real_node: RealNode, image: images.Image) -> Iterator[Installed]:
    inst = Installed(real_node, image)
    try:
        inst.apply()
        inst.ready()
        for component in ("controller", "scheduler"):
            names = {p.metadata.name for p in inst.pods(component)}
            assert {p.spec.node_name for p in inst.pods(component)} == {real_node.name}

            def leading(c: str = component, n: set[str] = names) -> bool:
                return inst.holder(c) in n

            kubeutil.wait_for(leading, 60, f"a railnet-{component} replica holding its Lease", interval=0.5)
        yield inst
    finally:
        inst.remove()


def pytorchjob(name: str, workers: int, rounds: int, pause: float) -> JSON:
    """Master + `workers` on the pod network running programs/torch_rendezvous.py; no GPUs, no rails."""
    def replica(n: int) -> JSON:
        spec: JSON = {
            "nodeSelector": {node.REAL_NODE_LABEL: "true"},
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "pytorch", "image": images.TESTBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["python3", "/programs/torch_rendezvous.py"],
                "env": [{"name": "ROUNDS", "value": str(rounds)}, {"name": "ROUND_PAUSE", "value": str(pause)}],
                "ports": [{"name": "pytorchjob-port", "containerPort": 23456}],
                "volumeMounts": [{"name": "programs", "mountPath": "/programs", "readOnly": True}],
            }],
            "volumes": [{"name": "programs", "configMap": {"name": "programs"}}],
        }
        return {"replicas": n, "restartPolicy": "OnFailure", "template": {"spec": spec}}

    return {"apiVersion": f"{api.KUBEFLOW}/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"runPolicy": {"cleanPodPolicy": "None"},
                     "pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(workers)}}}


class PodLog:
    """Every pod the namespace ever had, by name: the uids seen (a watch from before the job is created)."""

    def __init__(self, core: client.CoreV1Api, ns: str) -> None:
        self.uids: dict[str, set[str]] = {}
        self.stop = threading.Event()
        self.w = watch.Watch()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(core, ns), daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "pod watch did not start"

    def _run(self, core: client.CoreV1Api, ns: str) -> None:
        rv = core.list_namespaced_pod(ns).metadata.resource_version
        self.ready.set()
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for ev in self.w.stream(core.list_namespaced_pod, ns, resource_version=rv, timeout_seconds=5):
                    pod = ev["object"]
                    rv = pod.metadata.resource_version
                    self.uids.setdefault(pod.metadata.name, set()).add(pod.metadata.uid)

    def close(self) -> None:
        self.stop.set()
        self.w.stop()
        self.thread.join(15)


def submit(inst: Installed, ns: str, job: JSON) -> None:
    inst.rn.core.create_namespaced_config_map(ns, cj.programs_configmap())
    inst.custom.create_namespaced_custom_object(api.KUBEFLOW, "v1", ns, "pytorchjobs", job)


def succeeded(inst: Installed, ns: str, name: str, timeout: float = 240) -> None:
    def done() -> bool:
        job = inst.custom.get_namespaced_custom_object(api.KUBEFLOW, "v1", ns, "pytorchjobs", name)
        state = cj.condition(job)
        assert state != "Failed", job.get("status")
        return state == "Succeeded"

    try:
        kubeutil.wait_for(done, timeout, f"PyTorchJob {ns}/{name} Succeeded", interval=1)
    except AssertionError as exc:
        pods = [(p.metadata.name, p.status.phase, p.spec.node_name) for p in inst.rn.core.list_namespaced_pod(ns).items]
        raise AssertionError(f"{exc}\npods: {pods}\n{inst.diagnose()}") from None


def test_the_leaders_metrics_move_with_a_job(installed: Installed, ns: str) -> None:
    ctl, sched = installed.holder("controller"), installed.holder("scheduler")
    assert ctl and sched
    for component, leader in (("controller", ctl), ("scheduler", sched)):
        gauge = f"railnet_{'jobs' if component == 'controller' else 'scheduler'}_leader"
        for p in installed.pods(component):
            assert installed.metrics(p.metadata.name)[gauge] == (1 if p.metadata.name == leader else 0), p.metadata.name
    before_c, before_s = installed.metrics(ctl), installed.metrics(sched)
    submit(installed, ns, pytorchjob("m", 1, rounds=4, pause=0.2))
    succeeded(installed, ns, "m")
    pods = installed.rn.core.list_namespaced_pod(ns).items
    assert sorted(p.metadata.name for p in pods) == ["m-master-0", "m-worker-0"]
    assert {p.spec.scheduler_name for p in pods} == {"railnet"}  # gang scheduling: the chart's scheduler bound them
    assert {p.spec.node_name for p in pods} == {installed.rn.name}
    assert installed.holder("controller") == ctl and installed.holder("scheduler") == sched

    succeeded_jobs = f'railnet_jobs{{group="{api.KUBEFLOW}",kind="PyTorchJob",phase="Succeeded"}}'
    kubeutil.wait_for(lambda: installed.metrics(ctl).get(succeeded_jobs, 0) == before_c.get(succeeded_jobs, 0) + 1,
                      30, "railnet_jobs{phase=Succeeded} counting the job", interval=0.5)
    after_c, after_s = installed.metrics(ctl), installed.metrics(sched)
    pod_creates = 'railnet_jobs_creates_total{kind="Pod"}'
    assert after_c.get(pod_creates, 0) - before_c.get(pod_creates, 0) == 2, \
        {k: v for k, v in after_c.items() if "creates" in k}
    assert after_c.get(succeeded_jobs, 0) == before_c.get(succeeded_jobs, 0) + 1, \
        {k: v for k, v in after_c.items() if k.startswith("railnet_jobs{")}
    assert after_c["railnet_jobs_reconciles_total{result=\"ok\"}"] > before_c.get("railnet_jobs_reconciles_total{result=\"ok\"}", 0)
    assert after_s["railnet_scheduler_binds_total"] - before_s.get("railnet_scheduler_binds_total", 0) == 2
    # the standby replicas did nothing
    for component, leader, name in (("controller", ctl, pod_creates), ("scheduler", sched, "railnet_scheduler_binds_total")):
        for p in installed.pods(component):
            if p.metadata.name != leader:
                assert installed.metrics(p.metadata.name).get(name, 0) == 0, p.metadata.name


def test_the_controllers_leader_pod_deleted_during_a_job(installed: Installed, ns: str) -> None:
    rn = installed.rn
    replicas = ["ft-master-0", "ft-worker-0", "ft-worker-1"]
    log = PodLog(rn.core, ns)
    try:
        submit(installed, ns, pytorchjob("ft", 2, rounds=80, pause=0.25))  # ~20 s of rounds

        def all_running() -> bool:
            phases = {p.metadata.name: p.status.phase for p in rn.core.list_namespaced_pod(ns).items}
            return sorted(phases) == replicas and set(phases.values()) == {"Running"}

        kubeutil.wait_for(all_running, 180, "the PyTorchJob's three replicas Running", interval=0.5)
        leader = installed.holder("controller")
        standby = {p.metadata.name for p in installed.pods("controller")} - {leader}
        assert leader and len(standby) == 1, (leader, standby)
        deleted_at = time.monotonic()
        rn.core.delete_namespaced_pod(leader, NS)
        job = installed.custom.get_namespaced_custom_object(api.KUBEFLOW, "v1", ns, "pytorchjobs", "ft")
        assert cj.condition(job) != "Succeeded", "the job ended before the leader was deleted: nothing tested"

        new = kubeutil.wait_for(lambda: (h := installed.holder("controller")) not in (None, leader) and h, 60,
                                "another replica taking the Lease railnet-controller", interval=0.3)
        took = time.monotonic() - deleted_at
        succeeded(installed, ns, "ft")
        print(f"controller leader {leader} deleted; {new} took the Lease in {took:.1f}s; the job Succeeded "
              f"{time.monotonic() - deleted_at:.1f}s after the delete", flush=True)
        assert installed.holder("controller") == new
        time.sleep(2)  # a duplicate create by the new leader would show up by now
    finally:
        log.close()
    assert sorted(log.uids) == replicas, log.uids
    assert all(len(uids) == 1 for uids in log.uids.values()), f"a replica's pod was created twice: {log.uids}"
    pods = rn.core.list_namespaced_pod(ns).items
    assert {p.status.phase for p in pods} == {"Succeeded"}, [(p.metadata.name, p.status.phase) for p in pods]
    # the Deployment replaced the deleted pod; both replicas are back
    kubeutil.wait_for(lambda: len([p for p in installed.pods("controller") if p.status.phase == "Running"]) == 2,
                      120, "railnet-controller back to 2 replicas", interval=1)
