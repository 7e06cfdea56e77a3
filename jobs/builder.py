"""Pure manifests: a replica pod, its Service and the job's PodGroup, from the parsed ``Job``.

Host-network mode is KubeDL's (operator-anchors.md b.4/b.5): ``hostNetwork``, ``dnsPolicy:
ClusterFirstWithHostNet``, the framework port set as containerPort *and* hostPort (so every
scheduler's port filter sees it), and a ClusterIP Service whose fixed port targets that host port.
Otherwise the Service is headless with the template's ports.
"""

from __future__ import annotations

import copy
from typing import Any

from jobs import envs
from jobs.api import VERSIONS, Job

JSON = dict[str, Any]
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"  # scheduler/live/objects.py reads the same label
PORT_ANNOTATION = "railnet.io/host-port"


def owner(job: Job) -> JSON:
    return {"apiVersion": f"{job.group}/{VERSIONS[job.group]}", "kind": job.kind, "name": job.name,
            "uid": job.uid, "controller": True, "blockOwnerDeletion": True}


def pod(job: Job, rtype: str, index: int, host_port: int | None, scheduler_name: str | None) -> JSON:
    """The pod for replica (rtype, index); ``host_port`` is set in host-network mode."""
    r = job.replicas[rtype]
    template = copy.deepcopy(r.template)
    meta = template.get("metadata") or {}
    spec = template["spec"]
    labels = {**(meta.get("labels") or {}), **job.labels(rtype, index)}
    annotations = dict(meta.get("annotations") or {})
    fw = job.framework
    if host_port is not None:
        annotations[PORT_ANNOTATION] = str(host_port)
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
        main = next(c for c in spec["containers"] if c.get("name") == fw.container)
        others = [p for p in main.get("ports") or [] if p.get("name") != fw.port_name]
        main["ports"] = [{"name": fw.port_name, "containerPort": host_port, "hostPort": host_port,
                          "protocol": "TCP"}, *others]
    spec["restartPolicy"] = "Never" if r.restart_policy == "ExitCode" else r.restart_policy
    if job.gang and scheduler_name:
        labels[POD_GROUP_LABEL] = job.name
        spec.setdefault("schedulerName", scheduler_name)
    envs.apply_env(job, rtype, index, spec["containers"], host_port)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": job.pod_name(rtype, index), "namespace": job.namespace, "labels": labels,
                     "annotations": annotations, "ownerReferences": [owner(job)]},
        "spec": spec,
    }


def service_ports(job: Job, rtype: str, host_port: int | None) -> list[JSON]:
    fw = job.framework
    port = envs.template_port(job, rtype)
    if host_port is not None:
        return [{"name": fw.port_name, "port": port, "targetPort": host_port, "protocol": "TCP"}]
    main = next(c for c in job.replicas[rtype].template["spec"]["containers"] if c.get("name") == fw.container)
    declared = [{"name": p.get("name") or f"port-{p['containerPort']}", "port": int(p["containerPort"]),
                 "targetPort": int(p["containerPort"]), "protocol": p.get("protocol", "TCP")}
                for p in main.get("ports") or [] if p.get("containerPort")]
    if not any(p["name"] == fw.port_name for p in declared):
        declared.insert(0, {"name": fw.port_name, "port": port, "targetPort": port, "protocol": "TCP"})
    return declared


def service(job: Job, rtype: str, index: int, host_port: int | None) -> JSON:
    spec: JSON = {"selector": {k: v for k, v in job.labels(rtype, index).items()},
                  "ports": service_ports(job, rtype, host_port)}
    if host_port is None:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": job.pod_name(rtype, index), "namespace": job.namespace,
                     "labels": job.labels(rtype, index), "ownerReferences": [owner(job)]},
        "spec": spec,
    }


def podgroup(job: Job) -> JSON:
    return {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
        "metadata": {"name": job.name, "namespace": job.namespace, "labels": job.labels(),
                     "ownerReferences": [owner(job)]},
        "spec": {"minMember": job.min_available},
    }


def declared_host_ports(pod_spec: JSON) -> list[int]:
    """Host ports a pod holds on its node: hostPort fields, or every containerPort with hostNetwork."""
    out = []
    for c in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        for p in c.get("ports") or []:
            port = p.get("hostPort") or (p.get("containerPort") if pod_spec.get("hostNetwork") else None)
            if port:
                out.append(int(port))
    return out
