"""Job parsing and validation (jobs/api.py), the work queue and expectations, the CRD files."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs import api, crds, ports
from jobs.expectations import Expectations
from jobs.workqueue import WorkQueue

REPO = Path(__file__).resolve().parents[2]
RANGE = ports.PortRange(20000, 30000)


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "docs/jobs" / name).read_text())
    doc["metadata"].update(namespace="ns", uid="u")
    return doc


def test_the_anchor_examples_parse_with_each_anchors_defaults() -> None:
    tf = api.parse(load("kubedl-tfjob-mnist.yaml"), RANGE, False)
    assert (tf.total, tf.clean_pod_policy, tf.replicas["Worker"].restart_policy) == (3, "None", "Never")
    pt = api.parse(load("kubeflow-pytorchjob-simple.yaml"), RANGE, False)
    assert list(pt.replicas) == ["Master", "Worker"] and pt.total == 2 and pt.clean_pod_policy == "None"
    assert pt.labels("Master", 0)["training.kubeflow.org/job-role"] == "master"


def test_defaults_differ_by_group() -> None:
    doc = load("kubedl-tfjob-mnist.yaml")
    del doc["spec"]["tfReplicaSpecs"]["Worker"]["restartPolicy"], doc["spec"]["cleanPodPolicy"]
    kubedl = api.parse(doc, RANGE, False)
    assert (kubedl.replicas["Worker"].restart_policy, kubedl.clean_pod_policy) == ("ExitCode", "Running")
    doc["apiVersion"] = "kubeflow.org/v1"
    kubeflow = api.parse(doc, RANGE, False)
    assert (kubeflow.replicas["Worker"].restart_policy, kubeflow.clean_pod_policy) == ("Never", "None")
    assert kubedl.retryable(137, "") and not kubedl.retryable(129, "") and kubedl.retryable(1, "OOMKilled")
    assert kubeflow.retryable(129, "") and not kubeflow.retryable(1, "OOMKilled")


@pytest.mark.parametrize(("edit", "text"), [
    (lambda d: d["spec"]["tfReplicaSpecs"].update(Launcher={"replicas": 1}), "unknown replica type 'Launcher'"),
    (lambda d: d["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(name="tf"),
     "no container is named 'tensorflow'"),
    (lambda d: d["spec"]["tfReplicaSpecs"]["Worker"].update(restartPolicy="Sometimes"), "restartPolicy"),
    (lambda d: d["spec"].update(cleanPodPolicy="Some"), "cleanPodPolicy"),
    (lambda d: d["spec"].pop("tfReplicaSpecs"), "spec.tfReplicaSpecs is missing"),
    (lambda d: d["metadata"].update(annotations={api.NETWORK_MODE: "host", api.PORT_RANGE_ANNOTATION: "9-1"}),
     "host-port-range"),
    (lambda d: d["spec"]["tfReplicaSpecs"].update(Chief={"replicas": 2, "template": {"spec": {
        "containers": [{"name": "tensorflow"}]}}}), "at most one Chief"),
    (lambda d: d["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"].update(
        nodeName="n1", containers=[{"name": "tensorflow", "ports": [{"containerPort": 2222, "hostPort": 2222}]}]),
     "both pinned to node n1 with host port 2222"),
    (lambda d: d["spec"].update(schedulingPolicy={"minAvailable": 9}), "minAvailable is 9"),
])
def test_bad_input_says_what_to_fix(edit: Any, text: str) -> None:
    doc = copy.deepcopy(load("kubedl-tfjob-mnist.yaml"))
    edit(doc)
    with pytest.raises(api.JobSpecError, match=text.replace("(", r"\(")):
        api.parse(doc, RANGE, False)


def test_work_queue_deduplicates_and_never_hands_one_key_to_two_workers() -> None:
    q = WorkQueue()
    for _ in range(3):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get(0) == "a"
    q.add("a")  # while processing: only marked dirty
    assert q.get(0) == "b"
    assert q.get(0.01) is None
    q.done("a")
    assert q.get(0) == "a"
    q.done("a")
    q.done("b")
    assert q.retry("c") == pytest.approx(0.005) and q.retry("c") == pytest.approx(0.01)
    assert q.get(1) == "c"
    done = threading.Event()
    q.add_after("d", 0.05)
    threading.Thread(target=lambda: (q.get(2), done.set())).start()
    assert done.wait(2)


def test_expectations() -> None:
    e = Expectations(ttl=60)
    assert e.satisfied("j")
    e.expect("j", "add:Pod/ns/p")
    assert not e.satisfied("j")
    e.observe("j", "add:Pod/ns/p")
    assert e.satisfied("j")
    e = Expectations(ttl=0)
    e.expect("j", "x")
    assert e.satisfied("j")  # expired


def test_crd_files_are_generated_from_jobs_crds() -> None:
    assert crds.main(["--check"]) == 0
