"""The job APIs: TFJob and PyTorchJob as KubeDL and Kubeflow define them, parsed into one model.

A job is read from its raw JSON (the CRD schemas are permissive, so the anchors' YAML applies
unchanged) and validated here, before anything is created: a ``JobSpecError`` says what to fix and
becomes a ``Failed`` condition with reason ``InvalidSpec``. Where the two anchors differ (run policy
inlined in ``spec`` vs ``spec.runPolicy``, defaults, labels, retryable exit codes) the job's API group
decides, so each user's YAML behaves as it does under its own operator (docs/jobs.md has the table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs import ports, rails

JSON = dict[str, Any]

KUBEDL = "training.kubedl.io"
KUBEFLOW = "kubeflow.org"
VERSIONS = {KUBEDL: "v1alpha1", KUBEFLOW: "v1"}
NETWORK_MODE = "kubedl.io/network-mode"  # value "host": KubeDL host-network mode
PORT_RANGE_ANNOTATION = "railnet.io/host-port-range"  # per-job override of --hostnetwork-port-range
GANG_ANNOTATION = "railnet.io/gang-scheduling"  # "true"/"false": per-job override of --gang-scheduling
LAST_FAILOVER = "kubedl.io/last-failover-timestamp"  # on the job, RFC 3339: when fail-over last recreated a replica
CONTROLLER_LABEL = "railnet.io/controller"  # on every object the controller creates
CONTROLLER_VALUE = "jobs"
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
CLEAN_POD_POLICIES = ("All", "Running", "None")


@dataclass(frozen=True)
class Framework:
    kind: str
    plural: str
    replica_specs: str  # the spec field holding the replica map
    replica_types: tuple[str, ...]  # canonical names, in reconcile order
    container: str  # the container that gets the framework env and the port
    port_name: str
    default_port: int
    master_types: tuple[str, ...]  # at most one pod of these; it decides success when present


TF = Framework("TFJob", "tfjobs", "tfReplicaSpecs", ("PS", "Master", "Chief", "Worker", "Evaluator"),
               "tensorflow", "tfjob-port", 2222, ("Chief", "Master"))
PYTORCH = Framework("PyTorchJob", "pytorchjobs", "pytorchReplicaSpecs", ("Master", "Worker"),
                    "pytorch", "pytorchjob-port", 23456, ("Master",))
FRAMEWORKS = {f.kind: f for f in (TF, PYTORCH)}


def resource_path(group: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
    base = f"/apis/{group}/{VERSIONS[group]}"
    if namespace is None:
        return f"{base}/{plural}"
    return f"{base}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


def job_key(group: str, kind: str, namespace: str, name: str) -> str:
    return f"{kind}.{group}/{namespace}/{name}"


def split_key(key: str) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name) of a job key."""
    kind_group, namespace, name = key.split("/")
    kind, group = kind_group.split(".", 1)
    return group, kind, namespace, name


class JobSpecError(ValueError):
    """The job cannot run as written; the message says what to fix."""


@dataclass
class Replica:
    rtype: str  # canonical, e.g. "Worker"
    replicas: int
    restart_policy: str
    template: JSON

    @property
    def lower(self) -> str:
        return self.rtype.lower()


@dataclass
class Job:
    group: str
    framework: Framework
    namespace: str
    name: str
    uid: str
    replicas: dict[str, Replica]  # canonical rtype -> spec, in framework order
    clean_pod_policy: str
    backoff_limit: int | None
    active_deadline_s: int | None
    ttl_s: int | None
    suspend: bool
    success_policy: str
    host_network: bool
    port_range: ports.PortRange | None
    gang: bool
    min_available: int
    nproc_per_node: str = "auto"
    annotations: dict[str, str] = field(default_factory=dict)
    rail_networks: tuple[str, ...] | None = None  # annotation railnet.io/rail-networks; None: the controller's
    scheduling_policy: dict[str, Any] = field(default_factory=dict)  # schedulingPolicy (priorityClass, minAvailable)
    created: str = ""  # metadata.creationTimestamp (queue order)

    @property
    def kind(self) -> str:
        return self.framework.kind

    @property
    def key(self) -> str:
        return job_key(self.group, self.kind, self.namespace, self.name)

    @property
    def total(self) -> int:
        return sum(r.replicas for r in self.replicas.values())

    def pod_name(self, rtype: str, index: int) -> str:
        return f"{self.name}-{rtype.lower()}-{index}"

    def labels(self, rtype: str | None = None, index: int | None = None) -> dict[str, str]:
        """The anchors' pod labels (selectors of the replica Services), plus railnet's own."""
        if self.group == KUBEDL:
            out = {"group-name": KUBEDL, "job-name": self.name}
            keys = ("replica-type", "replica-index", "job-role")
        else:
            out = {"training.kubeflow.org/operator-name": f"{self.kind.lower()[:-3]}job-controller",
                   "training.kubeflow.org/job-name": self.name}
            keys = ("training.kubeflow.org/replica-type", "training.kubeflow.org/replica-index",
                    "training.kubeflow.org/job-role")
        if rtype is not None:
            out[keys[0]] = rtype.lower()
        if index is not None:
            out[keys[1]] = str(index)
        if rtype in self.framework.master_types:
            out[keys[2]] = "master"
        out[CONTROLLER_LABEL] = CONTROLLER_VALUE
        return out

    def retryable(self, exit_code: int | None, reason: str) -> bool:
        """ExitCode policy: may a pod that ended like this be recreated? (each anchor's own rule)"""
        if self.group == KUBEDL:
            return exit_code in (130, 137, 143, 138) or reason in ("OOMKilled", "Killed", "Evicted",
                                                                   "UnexpectedAdmissionError")
        return exit_code is not None and exit_code >= 128


def _int(value: Any, what: str, minimum: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise JobSpecError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _default_restart(group: str, kind: str, rtype: str) -> str:
    if group == KUBEDL:
        return "OnFailure" if kind == "PyTorchJob" and rtype == "Worker" else "ExitCode"
    return "Never" if kind == "TFJob" else "OnFailure"


def parse(obj: JSON, default_port_range: ports.PortRange, gang_default: bool) -> Job:
    """Validate a TFJob/PyTorchJob object; raises JobSpecError with what to fix."""
    group = obj["apiVersion"].split("/")[0]
    fw = FRAMEWORKS[obj["kind"]]
    meta, spec = obj["metadata"], obj.get("spec") or {}
    annotations = dict(meta.get("annotations") or {})
    run = spec if group == KUBEDL else (spec.get("runPolicy") or {})
    raw = spec.get(fw.replica_specs)
    if not isinstance(raw, dict) or not raw:
        raise JobSpecError(f"spec.{fw.replica_specs} is missing or empty: give at least one of "
                           f"{', '.join(fw.replica_types)}")
    canonical = {t.lower(): t for t in fw.replica_types}
    replicas: dict[str, Replica] = {}
    for name, rs in raw.items():
        rtype = canonical.get(str(name).lower())
        if rtype is None:
            raise JobSpecError(f"unknown replica type {name!r} in spec.{fw.replica_specs}: a {fw.kind} "
                               f"takes {', '.join(fw.replica_types)}")
        where = f"spec.{fw.replica_specs}.{name}"
        rs = rs or {}
        count = _int(rs.get("replicas", 1), f"{where}.replicas")
        policy = rs.get("restartPolicy") or _default_restart(group, fw.kind, rtype)
        if policy not in RESTART_POLICIES:
            raise JobSpecError(f"{where}.restartPolicy {policy!r} is not one of {', '.join(RESTART_POLICIES)}")
        template = rs.get("template") or {}
        containers = (template.get("spec") or {}).get("containers") or []
        if not containers:
            raise JobSpecError(f"{where}.template.spec.containers is empty")
        if not any(c.get("name") == fw.container for c in containers):
            raise JobSpecError(f"{where}: no container is named {fw.container!r}; the {fw.kind} controller "
                               f"sets the framework environment and port on that container, so name it so")
        if rtype in fw.master_types and (count or 0) > 1:
            raise JobSpecError(f"{where}.replicas is {count}: a {fw.kind} has at most one {rtype}")
        replicas[rtype] = Replica(rtype, count or 0, policy, template)
    replicas = {t: replicas[t] for t in fw.replica_types if t in replicas}
    masters = [t for t in fw.master_types if t in replicas]
    if len(masters) > 1:
        raise JobSpecError(f"a {fw.kind} has either {' or '.join(masters)}, not both")
    clean = run.get("cleanPodPolicy") or ("Running" if group == KUBEDL and fw.kind == "TFJob" else "None")
    if clean not in CLEAN_POD_POLICIES:
        raise JobSpecError(f"cleanPodPolicy {clean!r} is not one of {', '.join(CLEAN_POD_POLICIES)}")
    success = spec.get("successPolicy") or ""
    if success not in ("", "AllWorkers"):
        raise JobSpecError(f"spec.successPolicy {success!r} is not \"\" or \"AllWorkers\"")
    host = annotations.get(NETWORK_MODE) == "host"
    port_range: ports.PortRange | None = None
    if host:
        text = annotations.get(PORT_RANGE_ANNOTATION)
        try:
            port_range = ports.PortRange.parse(text) if text else default_port_range
        except ValueError as exc:
            raise JobSpecError(f"annotation {PORT_RANGE_ANNOTATION}: {exc}") from None
    sched = run.get("schedulingPolicy") or {}
    total = sum(r.replicas for r in replicas.values())
    min_available = _int(sched.get("minAvailable"), "schedulingPolicy.minAvailable", 1) or total
    if min_available > total:
        raise JobSpecError(f"schedulingPolicy.minAvailable is {min_available} but the job has only {total} "
                           "replicas")
    gang_text = annotations.get(GANG_ANNOTATION)
    if gang_text not in (None, "true", "false"):
        raise JobSpecError(f"annotation {GANG_ANNOTATION} must be \"true\" or \"false\", got {gang_text!r}")
    rail_text = annotations.get(rails.RAIL_NETWORKS)
    try:
        rail_networks = rails.parse_networks(rail_text) if rail_text is not None else None
    except ValueError as exc:
        raise JobSpecError(f"annotation {rails.RAIL_NETWORKS}: {exc}") from None
    job = Job(
        group=group, framework=fw, namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""),
        replicas=replicas, clean_pod_policy=clean,
        backoff_limit=_int(run.get("backoffLimit"), "backoffLimit"),
        active_deadline_s=_int(run.get("activeDeadlineSeconds"), "activeDeadlineSeconds", 1),
        ttl_s=_int(run.get("ttlSecondsAfterFinished"), "ttlSecondsAfterFinished"),
        suspend=bool(run.get("suspend", spec.get("suspend", False))),
        success_policy=success, host_network=host, port_range=port_range,
        gang=gang_default if gang_text is None else gang_text == "true", min_available=min_available,
        nproc_per_node=str(spec.get("nprocPerNode") or "auto"), annotations=annotations,
        rail_networks=rail_networks, scheduling_policy=dict(sched), created=meta.get("creationTimestamp") or "",
    )
    _check_pinned_ports(job)
    return job


def _pinned_node(template: JSON) -> str | None:
    spec = template.get("spec") or {}
    node: str | None = spec.get("nodeName") or (spec.get("nodeSelector") or {}).get("kubernetes.io/hostname")
    return node


def _fixed_host_ports(template: JSON) -> set[int]:
    spec = template.get("spec") or {}
    out: set[int] = set()
    for c in spec.get("containers") or []:
        for p in c.get("ports") or []:
            host_port = p.get("hostPort") or (p.get("containerPort") if spec.get("hostNetwork") else None)
            if host_port:
                out.add(int(host_port))
    return out


def _check_pinned_ports(job: Job) -> None:
    """Two replicas forced onto one node with the same fixed host port can never both run."""
    if job.host_network:
        return  # host mode picks the ports itself
    held: dict[tuple[str, int], str] = {}
    for r in job.replicas.values():
        node = _pinned_node(r.template)
        if node is None:
            continue
        for port in sorted(_fixed_host_ports(r.template)):
            for i in range(r.replicas):
                other = held.setdefault((node, port), job.pod_name(r.rtype, i))
                if other != job.pod_name(r.rtype, i):
                    raise JobSpecError(f"{other} and {job.pod_name(r.rtype, i)} are both pinned to node {node} "
                                       f"with host port {port}; only one can run: unpin them, drop the "
                                       f"fixed port, or use annotation {NETWORK_MODE}: host")
