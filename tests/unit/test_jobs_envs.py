"""TF_CONFIG and PyTorch env as KubeDL and Kubeflow write them (operator-anchors.md section c)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobs import api, builder, envs, ports

RANGE = ports.PortRange(20000, 30000)


def tfjob(group: str = api.KUBEDL, host: bool = False, evaluator: bool = False, ns: str = "kubedl") -> api.Job:
    def rs(n: int) -> dict[str, Any]:
        return {"replicas": n, "template": {"spec": {"containers": [{"name": "tensorflow", "image": "x"}]}}}

    specs = {"PS": rs(1), "Worker": rs(2), **({"Evaluator": rs(1)} if evaluator else {})}
    obj = {"apiVersion": f"{group}/{api.VERSIONS[group]}", "kind": "TFJob",
           "metadata": {"name": "mnist", "namespace": ns, "uid": "u1",
                        "annotations": {api.NETWORK_MODE: "host"} if host else {}},
           "spec": {"tfReplicaSpecs": specs}}
    return api.parse(obj, RANGE, False)


def pytorchjob(group: str) -> api.Job:
    def rs(n: int) -> dict[str, Any]:
        return {"replicas": n, "template": {"spec": {"containers": [{"name": "pytorch", "image": "x"},
                                                                    {"name": "sidecar", "image": "y"}]}}}

    obj = {"apiVersion": f"{group}/{api.VERSIONS[group]}", "kind": "PyTorchJob",
           "metadata": {"name": "ddp", "namespace": "ns", "uid": "u2"},
           "spec": {"pytorchReplicaSpecs": {"Master": rs(1), "Worker": rs(2)}}}
    return api.parse(obj, RANGE, False)


def test_tf_config_normal_mode_matches_the_anchor_byte_for_byte() -> None:
    got = envs.tf_config(tfjob(), "Worker", 1, domain="")
    assert got == ('{"cluster":{"ps":["mnist-ps-0.kubedl.svc:2222"],"worker":["mnist-worker-0.kubedl.svc:2222",'
                   '"mnist-worker-1.kubedl.svc:2222"]},"task":{"type":"worker","index":1},"environment":"cloud"}')


def test_tf_config_host_mode_own_entry_has_the_host_port_others_the_service_port() -> None:
    job = tfjob(host=True)
    worker1 = json.loads(envs.tf_config(job, "Worker", 1, own_port=27782, domain=""))
    assert worker1["cluster"]["worker"] == ["mnist-worker-0.kubedl.svc:2222", "mnist-worker-1.kubedl.svc:27782"]
    assert worker1["cluster"]["ps"] == ["mnist-ps-0.kubedl.svc:2222"]
    ps0 = json.loads(envs.tf_config(job, "PS", 0, own_port=23817, domain=""))
    assert ps0["cluster"]["ps"] == ["mnist-ps-0.kubedl.svc:23817"]
    assert ps0["task"] == {"type": "ps", "index": 0}


@pytest.mark.parametrize(("group", "listed"), [(api.KUBEDL, False), (api.KUBEFLOW, True)])
def test_evaluator_is_listed_only_by_kubeflow(group: str, listed: bool) -> None:
    cluster = json.loads(envs.tf_config(tfjob(group, evaluator=True), "Worker", 0, domain=""))["cluster"]
    assert ("evaluator" in cluster) is listed


def test_custom_cluster_domain() -> None:
    assert envs.service_host(tfjob(), "PS", 0, domain="cluster.local") == "mnist-ps-0.kubedl.svc.cluster.local"


def _env(items: list[dict[str, str]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in items}


def test_pytorch_env_kubedl_normal_and_host() -> None:
    job = pytorchjob(api.KUBEDL)
    assert _env(envs.pytorch_env(job, "Master", 0)) == {
        "MASTER_ADDR": "localhost", "MASTER_PORT": "23456", "RANK": "0", "WORLD_SIZE": "3", "PYTHONUNBUFFERED": "0"}
    assert _env(envs.pytorch_env(job, "Worker", 1))["RANK"] == "2"
    assert _env(envs.pytorch_env(job, "Worker", 1))["MASTER_ADDR"] == "ddp-master-0"
    assert _env(envs.pytorch_env(job, "Master", 0, own_port=24561))["MASTER_PORT"] == "24561"
    assert _env(envs.pytorch_env(job, "Worker", 0, own_port=25000))["MASTER_PORT"] == "23456"


def test_pytorch_env_kubeflow() -> None:
    env = _env(envs.pytorch_env(pytorchjob(api.KUBEFLOW), "Worker", 0))
    assert env == {"PYTHONUNBUFFERED": "1", "MASTER_PORT": "23456", "PET_MASTER_PORT": "23456",
                   "MASTER_ADDR": "ddp-master-0", "PET_MASTER_ADDR": "ddp-master-0", "WORLD_SIZE": "3",
                   "RANK": "1", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "auto", "PET_NNODES": "3"}


@pytest.mark.parametrize(("group", "containers"), [(api.KUBEDL, {"pytorch", "sidecar"}), (api.KUBEFLOW, {"pytorch"})])
def test_pytorch_env_goes_to_the_containers_each_anchor_uses(group: str, containers: set[str]) -> None:
    pod = builder.pod(pytorchjob(group), "Worker", 0, None, None)
    with_env = {c["name"] for c in pod["spec"]["containers"] if any(e["name"] == "RANK" for e in c.get("env", []))}
    assert with_env == containers


def test_host_mode_pod_and_service() -> None:
    job = tfjob(host=True)
    pod = builder.pod(job, "Worker", 1, 27782, None)
    spec = pod["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["restartPolicy"] == "Never"  # KubeDL's TF default is ExitCode
    assert spec["containers"][0]["ports"][0] == {"name": "tfjob-port", "containerPort": 27782, "hostPort": 27782,
                                                 "protocol": "TCP"}
    tf_config = json.loads(spec["containers"][0]["env"][0]["value"])
    assert tf_config["cluster"]["worker"][1].endswith(":27782")
    svc = builder.service(job, "Worker", 1, 27782)
    assert "clusterIP" not in svc["spec"]
    assert svc["spec"]["ports"] == [{"name": "tfjob-port", "port": 2222, "targetPort": 27782, "protocol": "TCP"}]
    assert svc["spec"]["selector"]["replica-index"] == "1"
    assert builder.declared_host_ports(spec) == [27782]


def test_normal_mode_service_is_headless_and_single_replica_tf_gets_no_tf_config() -> None:
    job = tfjob()
    assert builder.service(job, "PS", 0, None)["spec"]["clusterIP"] == "None"
    job.replicas = {"Worker": job.replicas["Worker"]}
    job.replicas["Worker"].replicas = 1
    pod = builder.pod(job, "Worker", 0, None, None)
    assert "env" not in pod["spec"]["containers"][0]


def test_gang_pods_carry_the_group_label_and_scheduler_name() -> None:
    job = tfjob()
    job.gang = True
    pod = builder.pod(job, "Worker", 0, None, "railnet")
    assert pod["metadata"]["labels"][builder.POD_GROUP_LABEL] == "mnist"
    assert pod["spec"]["schedulerName"] == "railnet"
    assert builder.podgroup(job)["spec"] == {"minMember": 3}
