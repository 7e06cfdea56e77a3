"""railnet.dev.cluster_demo_jobs: the chart values render, the dev-cluster patches, and the per-pod table row."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from railnet.dev import chart, node
from railnet.dev import cluster_demo_jobs as cj


def test_values_render_and_patches_reach_every_component(tmp_path: Path) -> None:
    lay = node.Layout(tmp_path / "cluster-demo-x", "cluster-demo-x")
    values = cj.chart_values("railnet.local/railnet:abc", lay, Path("/run/railnet/cd/agent.sock"), tmp_path / "st",
                             {"node": 19401, "controller": 19402, "scheduler": 19403})
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(values))
    docs = [d for d in yaml.safe_load_all(chart.template("--values", str(tmp_path / "v.yaml"), values=None,
                                                         include_crds=False)) if d]
    cj.patch_for_dev_cluster(docs, "127.0.0.1", 6443, Path("/tmp/fixture-sys"))
    workloads = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
                 if d["kind"] in ("DaemonSet", "Deployment")}
    assert sorted(workloads) == ["railnet-controller", "railnet-node", "railnet-scheduler"]
    for name, spec in workloads.items():
        env = [e["name"] for e in spec["containers"][0]["env"]]
        assert env.count("KUBERNETES_SERVICE_HOST") == 1 and env.count("KUBERNETES_SERVICE_PORT") == 1, name
        assert spec["hostNetwork"] is True, name
    agent = workloads["railnet-node"]["containers"][0]
    assert {"name": "RAILNET_SYSFS_ROOT", "value": "/tmp/fixture-sys"} in agent["env"]
    assert [a for a in agent["args"] if a.startswith("--sysfs")] == ["--sysfs=/tmp/fixture-sys"]
    [nad] = [d for d in docs if d["kind"] == "NetworkAttachmentDefinition"]
    assert nad["metadata"]["namespace"] == cj.NAMESPACE
    assert json.loads(nad["spec"]["config"])["rail"] == "auto"
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "IPPool") == ["rail0", "rail1"]


def test_pod_row_reads_allocation_network_status_and_host_ports() -> None:
    alloc = {"version": 1, "node": "real-node", "topologyKnown": True,
             "gpus": [{"index": 0}, {"index": 1}],
             "nics": [{"index": 0, "name": "rcd1n0"}, {"index": 1, "name": "rcd1n1"}],
             "rails": [{"rail": 0, "gpu": 0, "nic": 0, "tier": 1, "tierName": "SAME_SWITCH"},
                       {"rail": 1, "gpu": 1, "nic": 1, "tier": 1, "tierName": "SAME_SWITCH"}]}
    status = [{"name": "railnet-primary", "interface": "eth0", "ips": ["10.200.1.5"], "default": True},
              {"name": "cluster-demo/rails", "interface": "rail0", "ips": ["10.81.0.2"]},
              {"name": "cluster-demo/rails", "interface": "rail1", "ips": ["10.82.0.2"]}]
    pod = {"metadata": {"name": "pt-master-0", "annotations": {
        "railnet.io/allocation": json.dumps(alloc), cj.NETWORK_STATUS: json.dumps(status)}},
        "spec": {"nodeName": "real-node", "containers": [{"name": "c", "ports": [{"containerPort": 23456}]}]}}
    assert cj.pod_row(pod) == ["pt-master-0", "real-node", "0,1", "rcd1n0,rcd1n1", "SAME_SWITCH",
                               "eth0=10.200.1.5 rail0=10.81.0.2 rail1=10.82.0.2", "-"]
    host = {"metadata": {"name": "tf-ps-0"}, "spec": {"nodeName": "real-node", "hostNetwork": True,
                                                       "containers": [{"name": "c", "ports": [{"containerPort": 27503}]}]}}
    assert cj.pod_row(host) == ["tf-ps-0", "real-node", "-", "-", "-", "host network", "27503"]
