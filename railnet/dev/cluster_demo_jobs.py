"""What `make cluster-demo` runs and shows: the chart's values for the dev cluster, the training jobs, and the
per-pod table read back from the API (railnet.io/allocation, network-status, host ports).

Pure functions of their inputs; railnet.dev.cluster_demo does the I/O.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs import api, builder
from railnet.dev import images, node
from scheduler.live.allocation import PodAllocation
from scheduler.live.objects import ALLOCATION_ANNOTATION

JSON = dict[str, Any]
NAMESPACE = "cluster-demo"
PROGRAMS = Path(__file__).resolve().parents[2] / "tests" / "node" / "programs"  # the node tests' programs
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
RAIL_POOLS = {"rail0": "10.81.0.0/24", "rail1": "10.82.0.0/24"}
ROUNDS, PAUSE = 20, 0.2


def chart_values(image_ref: str, lay: node.Layout, socket: Path, state_dir: Path, ports: dict[str, int]) -> JSON:
    """The chart's values for the dev cluster's real node: its private CNI and kubelet dirs, one replica of the
    controller and the scheduler pinned to the real node, an auto rail network with one pool per rail."""
    repo, tag = image_ref.rsplit(":", 1)
    real = {node.REAL_NODE_LABEL: "true"}
    return {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "components": {"node": True, "dra": False, "controller": True, "scheduler": True, "ipam": False},
        "cni": {"primaryConflist": "10-railnet-primary.conflist", "binDir": str(lay.cni_bin),
                "confDir": str(lay.cni_conf)},
        "node": {"socket": str(socket), "stateDir": str(state_dir), "kubeletDir": str(lay.kubelet_root),
                 "cdiDir": str(lay.cdi_dir), "metricsPort": ports["node"], "publishTopologySeconds": 60,
                 "publishHostListenersSeconds": 5, "nodeSelector": real},
        "controller": {"replicas": 1, "metricsPort": ports["controller"], "nodeSelector": real},
        "scheduler": {"replicas": 1, "metricsPort": ports["scheduler"], "nodeSelector": real},
        "rails": [{"name": "rails", "auto": True, "pool": "rail{rail}", "namespaces": [NAMESPACE]}],
        "pools": [{"name": name, "subnet": subnet, "blockSize": 28, "rail": i}
                  for i, (name, subnet) in enumerate(RAIL_POOLS.items())],
    }


def patch_for_dev_cluster(docs: list[JSON], server_host: str, server_port: int, sysfs: Path) -> None:
    """What the dev cluster needs beyond the chart's values (as tests/node/test_install.py does):

    * the API server listens on 127.0.0.1, which only host-network pods reach: the agent (host network
      already), the controller and the scheduler get KUBERNETES_SERVICE_HOST/PORT, the latter two hostNetwork;
    * the agent reads the hgx-h100 fixture sysfs (RAILNET_SYSFS_ROOT, a read-only hostPath) whose eight NICs
      are veths on this machine: there are no GPUs or RoCE NICs here."""
    env = [{"name": "KUBERNETES_SERVICE_HOST", "value": server_host},
           {"name": "KUBERNETES_SERVICE_PORT", "value": str(server_port)}]
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if spec is None:
            continue
        if doc["kind"] == "DaemonSet":
            agent = spec["containers"][0]
            agent["args"] = [f"--sysfs={sysfs}" if a.startswith("--sysfs=") else a for a in agent.get("args", [])]
            _set_env(agent, [*env, {"name": "RAILNET_SYSFS_ROOT", "value": str(sysfs)}])
            agent.setdefault("volumeMounts", []).append({"name": "fixture-sys", "mountPath": str(sysfs),
                                                         "readOnly": True})
            spec.setdefault("volumes", []).append({"name": "fixture-sys",
                                                   "hostPath": {"path": str(sysfs), "type": "Directory"}})
        elif doc["kind"] == "Deployment":
            spec.update(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")
            _set_env(spec["containers"][0], env)


def _set_env(container: JSON, env: list[JSON]) -> None:
    """Set variables by name (a chart that already sets one, e.g. node.apiServer, is overridden, not doubled)."""
    names = {e["name"] for e in env}
    container["env"] = [e for e in container.get("env", []) if e["name"] not in names] + env


def program_template(container: str, program: str, port_name: str, port: int, selector: dict[str, str],
                     limits: dict[str, str] | None = None, rounds: int = ROUNDS, pause: float = PAUSE) -> JSON:
    """A replica template running one of tests/node/programs/ (mounted from the ConfigMap `programs`)."""
    spec: JSON = {
        "nodeSelector": selector,
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": container, "image": images.TESTBOX_IMAGE, "imagePullPolicy": "Never",
            "command": ["python3", f"/programs/{program}"],
            "env": [{"name": "ROUNDS", "value": str(rounds)}, {"name": "ROUND_PAUSE", "value": str(pause)}],
            "ports": [{"name": port_name, "containerPort": port}],
            "volumeMounts": [{"name": "programs", "mountPath": "/programs", "readOnly": True}],
        }],
        "volumes": [{"name": "programs", "configMap": {"name": "programs"}}],
    }
    if limits:
        spec["containers"][0]["resources"] = {"limits": limits}
    return {"spec": spec}


def tfjob(port_range: str) -> JSON:
    """KubeDL host-network TFJob: PS + 2 workers (one GPU each) exchanging parameters over TF_CONFIG."""
    real = {node.REAL_NODE_LABEL: "true"}

    def replica(n: int, gpus: int) -> JSON:
        limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
        return {"replicas": n, "restartPolicy": "ExitCode",
                "template": program_template("tensorflow", "tf_param_exchange.py", "tfjob-port", 2222, real, limits)}

    return {"apiVersion": f"{api.KUBEDL}/v1alpha1", "kind": "TFJob",
            "metadata": {"name": "tf", "annotations": {api.NETWORK_MODE: "host", api.PORT_RANGE_ANNOTATION: port_range}},
            "spec": {"cleanPodPolicy": "None", "successPolicy": "AllWorkers",
                     "tfReplicaSpecs": {"PS": replica(1, 0), "Worker": replica(2, 1)}}}


def pytorchjob(name: str, workers: int, gpus: int, nics: int, selector: dict[str, str], rounds: int = ROUNDS) -> JSON:
    """Kubeflow PyTorchJob on the pod network: Master + workers, each with `gpus` GPUs and `nics` RoCE rails."""
    limits = {"nvidia.com/gpu": str(gpus), "rdma/roce": str(nics)}

    def replica(n: int) -> JSON:
        tmpl = program_template("pytorch", "torch_rendezvous.py", "pytorchjob-port", 23456, selector, limits)
        tmpl["spec"]["containers"][0]["env"][0]["value"] = str(rounds)
        return {"replicas": n, "restartPolicy": "OnFailure", "template": tmpl}

    return {"apiVersion": f"{api.KUBEFLOW}/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"runPolicy": {"cleanPodPolicy": "None"},
                     "pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(workers)}}}


def programs_configmap() -> JSON:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "programs"},
            "data": {p.name: p.read_text() for p in sorted(PROGRAMS.glob("*.py"))}}


def condition(job: JSON) -> str:
    """The job's latest true condition (Created, Running, Succeeded, Failed...)."""
    conds = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    return str(conds[-1]["type"]) if conds else "Pending"


def pod_row(pod: JSON) -> list[str]:
    """node, GPUs, NICs, tier, interfaces and IPs, host ports: from the pod's annotations and spec."""
    meta, spec = pod["metadata"], pod["spec"]
    ann = meta.get("annotations") or {}
    gpus = nics = tiers = "-"
    text = ann.get(ALLOCATION_ANNOTATION)
    if text:
        alloc = PodAllocation.from_annotation(text)
        gpus = ",".join(str(g.index) for g in alloc.gpus) or "-"
        nics = ",".join(n.name or str(n.index) for n in alloc.nics) or "-"
        tiers = ",".join(sorted({r.tier_name for r in alloc.rails})) or "-"
    interfaces = "host network" if spec.get("hostNetwork") else "-"
    if not spec.get("hostNetwork") and NETWORK_STATUS in ann:
        interfaces = " ".join(f"{s.get('interface')}={','.join(s.get('ips') or [])}"
                              for s in json.loads(ann[NETWORK_STATUS]))
    ports = ",".join(map(str, builder.declared_host_ports(spec))) or "-"
    return [meta["name"], spec.get("nodeName") or "-", gpus, nics, tiers, interfaces, ports]


HEADER = ["pod", "node", "GPUs", "NICs", "tier", "interfaces and IPs", "host ports"]


def table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([line.format(*header), line.format(*("-" * w for w in widths))] + [line.format(*r) for r in rows])
