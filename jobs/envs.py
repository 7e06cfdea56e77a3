"""The framework environment of one replica pod: TF_CONFIG, or PyTorch's MASTER_*/RANK/WORLD_SIZE.

Formats follow operator-anchors.md (c): the cluster spec lists every replica by its Service DNS
name ``<job>-<rtype>-<i>.<ns>.svc`` (``.<CUSTOM_CLUSTER_DOMAIN>`` appended when that variable is
set on the controller) and the template port. In host-network mode a pod's *own* entry carries its
real host port; everyone else goes through the Services, whose fixed port forwards to the host port
(KubeDL ``genClusterSpec``). Kubeflow lists Evaluators in ``cluster``; KubeDL leaves them out.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jobs.api import KUBEDL, Job

_TF_CLUSTER_TYPES = ("chief", "master", "ps", "worker")


def service_host(job: Job, rtype: str, index: int, domain: str | None = None) -> str:
    domain = os.environ.get("CUSTOM_CLUSTER_DOMAIN", "") if domain is None else domain
    host = f"{job.pod_name(rtype, index)}.{job.namespace}.svc"
    return f"{host}.{domain}" if domain else host


def template_port(job: Job, rtype: str) -> int:
    """The port the replica's template declares under the framework's port name (else the default)."""
    fw = job.framework
    for c in job.replicas[rtype].template["spec"]["containers"]:
        if c.get("name") != fw.container:
            continue
        for p in c.get("ports") or []:
            if p.get("name") == fw.port_name and p.get("containerPort"):
                return int(p["containerPort"])
    return fw.default_port


def tf_config(job: Job, rtype: str, index: int, own_port: int | None = None, domain: str | None = None) -> str:
    """TF_CONFIG for replica (rtype, index); ``own_port`` is its host port in host-network mode."""
    kinds = _TF_CLUSTER_TYPES if job.group == KUBEDL else (*_TF_CLUSTER_TYPES, "evaluator")
    cluster: dict[str, list[str]] = {}
    for r in job.replicas.values():
        if r.lower not in kinds:
            continue
        port = template_port(job, r.rtype)
        cluster[r.lower] = [
            f"{service_host(job, r.rtype, i, domain)}:"
            f"{own_port if own_port and (r.rtype, i) == (rtype, index) else port}"
            for i in range(r.replicas)
        ]
    body = {"cluster": dict(sorted(cluster.items())), "task": {"type": rtype.lower(), "index": index},
            "environment": "cloud"}
    return json.dumps(body, separators=(",", ":"))


def pytorch_env(job: Job, rtype: str, index: int, own_port: int | None = None) -> list[dict[str, str]]:
    """MASTER_ADDR/PORT, RANK, WORLD_SIZE (+ Kubeflow's PET_* variables for kubeflow.org jobs)."""
    has_master = "Master" in job.replicas
    master = job.pod_name("Master", 0) if has_master else job.pod_name("Worker", 0)
    port = template_port(job, "Master" if has_master else "Worker")
    is_master = rtype == "Master" or (not has_master and index == 0)
    rank = index + (1 if has_master and rtype == "Worker" else 0)
    nodes = job.total
    if job.group == KUBEDL:
        addr = "localhost" if is_master else master  # KubeDL's PyTorchLocalMasterAddr gate (on by default)
        master_port = own_port if is_master and own_port else port
        return [{"name": "MASTER_ADDR", "value": addr}, {"name": "MASTER_PORT", "value": str(master_port)},
                {"name": "RANK", "value": str(rank)}, {"name": "WORLD_SIZE", "value": str(nodes)},
                {"name": "PYTHONUNBUFFERED", "value": "0"}]
    nproc = job.nproc_per_node
    world = nodes * (int(nproc) if nproc.isdigit() else 1)
    addr = "localhost" if is_master and own_port else master
    master_port = own_port if is_master and own_port else port
    return [{"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "MASTER_PORT", "value": str(master_port)}, {"name": "PET_MASTER_PORT", "value": str(master_port)},
            {"name": "MASTER_ADDR", "value": addr}, {"name": "PET_MASTER_ADDR", "value": addr},
            {"name": "WORLD_SIZE", "value": str(world)}, {"name": "RANK", "value": str(rank)},
            {"name": "PET_NODE_RANK", "value": str(rank)}, {"name": "PET_NPROC_PER_NODE", "value": nproc},
            {"name": "PET_NNODES", "value": str(nodes)}]


def apply_env(job: Job, rtype: str, index: int, containers: list[dict[str, Any]], own_port: int | None) -> None:
    """Upsert the framework env into the pod's containers (KubeDL PyTorch: every container)."""
    fw = job.framework
    if fw.kind == "TFJob":
        if job.total <= 1:
            return  # neither anchor sets TF_CONFIG for a single-replica job
        env = [{"name": "TF_CONFIG", "value": tf_config(job, rtype, index, own_port)}]
        targets = [c for c in containers if c.get("name") == fw.container]
    else:
        env = pytorch_env(job, rtype, index, own_port)
        targets = containers if job.group == KUBEDL else [c for c in containers if c.get("name") == fw.container]
    names = {e["name"] for e in env}
    for c in targets:
        c["env"] = [e for e in c.get("env") or [] if e.get("name") not in names] + [dict(e) for e in env]
