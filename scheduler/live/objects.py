"""Pure translation of API objects (plain JSON dicts) into what the core needs, and the node filters.

Nothing here talks to the API server: pods and nodes come in as the dicts a watch delivers, so the
unit tests feed literal JSON. The filters follow the Kubernetes rules kube-scheduler applies
(TaintToleration, NodeSelector, required NodeAffinity); railnet's core then only ever sees nodes a
pod may use.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from scheduler.live.hostports import HostPort, of_pod
from scheduler.model import MILLI, PodSpec

JSON = dict[str, Any]
GPU_RESOURCE = "nvidia.com/gpu"
RDMA_RESOURCES = ("rdma/roce",)
ALLOCATION_ANNOTATION = "railnet.io/allocation"
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
KOORD_GANG_NAME = "gang.scheduling.koordinator.sh/name"
KOORD_GANG_MIN = "gang.scheduling.koordinator.sh/min-available"
KOORD_GANG_WAIT = "gang.scheduling.koordinator.sh/waiting-time"
QUOTA_NAME_LABEL = "quota.scheduling.koordinator.sh/name"  # Koordinator: a pod names its ElasticQuota
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}

_SUFFIX: dict[str, Decimal | int] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity ("100m", "128Mi", "1.5", "1e3") as a Decimal of base units."""
    match = _QUANTITY.match(str(text).strip())
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = match.groups()
    return Decimal(number) * Decimal(_SUFFIX[suffix])


def _milli(text: str | int | float) -> int:
    return math.ceil(quantity(text) * 1000)


def _mib(text: str | int | float) -> int:
    return math.ceil(quantity(text) / 2**20)


def _count(text: str | int | float) -> int:
    return math.floor(quantity(text))


cpu_milli, memory_mib, count = _milli, _mib, _count  # public names for quota amounts


@dataclass(frozen=True)
class Resources:
    """What a pod asks for, or what a node offers, in the units of the core's model."""

    cpu_milli: int = 0
    memory_mib: int = 0
    gpus: int = 0
    rdma: int = 0
    pods: int = 0


def node_resources(node: Mapping[str, Any], gpu: str = GPU_RESOURCE,
                   rdma: Sequence[str] = RDMA_RESOURCES) -> Resources:
    alloc = node.get("status", {}).get("allocatable") or node.get("status", {}).get("capacity") or {}
    return Resources(
        cpu_milli=_milli(alloc.get("cpu", 0)),
        memory_mib=math.floor(quantity(alloc.get("memory", 0)) / 2**20),
        gpus=_count(alloc.get(gpu, 0)),
        rdma=sum(_count(alloc.get(r, 0)) for r in rdma),
        pods=_count(alloc.get("pods", 110)),
    )


def _container_requests(container: Mapping[str, Any]) -> dict[str, str]:
    res = container.get("resources") or {}
    # Extended resources may be given as limits only: the request then equals the limit.
    return {**(res.get("limits") or {}), **(res.get("requests") or {})}


def pod_resources(pod: Mapping[str, Any], gpu: str = GPU_RESOURCE,
                  rdma: Sequence[str] = RDMA_RESOURCES) -> Resources:
    """Effective requests: sum over containers, at least the largest init container, plus overhead."""
    spec = pod.get("spec", {})

    def add(reqs: Mapping[str, str]) -> list[int]:
        return [_milli(reqs.get("cpu", 0)), _mib(reqs.get("memory", 0)), _count(reqs.get(gpu, 0)),
                sum(_count(reqs.get(r, 0)) for r in rdma)]

    total = [0, 0, 0, 0]
    for container in spec.get("containers") or []:
        total = [a + b for a, b in zip(total, add(_container_requests(container)), strict=True)]
    for container in spec.get("initContainers") or []:
        total = [max(a, b) for a, b in zip(total, add(_container_requests(container)), strict=True)]
    total = [a + b for a, b in zip(total, add(spec.get("overhead") or {}), strict=True)]
    return Resources(total[0], total[1], total[2], total[3], pods=1)


def pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def pod_spec(key: str, res: Resources) -> PodSpec:
    """The core's view of a pod: whole GPUs and RDMA NICs (GPU shares are not asked through the API)."""
    return PodSpec(key, res.cpu_milli, res.memory_mib, res.gpus, MILLI if res.gpus else 0, rdma_nics=res.rdma)


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


# -- gangs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GangRef:
    """Which gang a pod belongs to, and what its pods say about it (PodGroup or Koordinator)."""

    key: str  # namespace/name
    kind: str  # "PodGroup" or "koordinator"
    min_member: int | None  # from annotations; a PodGroup's comes from the PodGroup object
    timeout_s: float | None = None


def gang_of(pod: Mapping[str, Any]) -> GangRef | None:
    meta = pod.get("metadata", {})
    ns = meta.get("namespace", "")
    group = (meta.get("labels") or {}).get(POD_GROUP_LABEL)
    if group:
        return GangRef(f"{ns}/{group}", "PodGroup", None)
    ann = meta.get("annotations") or {}
    name = ann.get(KOORD_GANG_NAME)
    if name:
        try:
            minimum: int | None = int(ann.get(KOORD_GANG_MIN, "0")) or None
        except ValueError:
            minimum = -1  # reported as bad input by the gang step
        wait = ann.get(KOORD_GANG_WAIT)
        return GangRef(f"{ns}/{name}", "koordinator", minimum, _duration(wait) if wait else None)
    return None


def _duration(text: str) -> float | None:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not match:
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


# -- node filters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraints:
    """The parts of a pod spec that decide which nodes it may use; hashable, to cache per shape."""

    tolerations: str = "[]"
    node_selector: str = "{}"
    affinity: str = "[]"
    host_ports: tuple[HostPort, ...] = ()  # hostports.py; checked per decision, not part of the signature
    signature: tuple[str, str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", (self.tolerations, self.node_selector, self.affinity))


def constraints_of(pod: Mapping[str, Any]) -> Constraints:
    spec = pod.get("spec", {})
    terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    return Constraints(
        json.dumps(spec.get("tolerations") or [], sort_keys=True),
        json.dumps(spec.get("nodeSelector") or {}, sort_keys=True),
        json.dumps(terms, sort_keys=True),
        of_pod(pod),
    )


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    key = toleration.get("key") or ""
    if operator == "Exists":
        return not key or key == taint.get("key")
    return key == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or "")


def blocking_taints(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = node.get("spec", {})
    taints = [t for t in spec.get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")]
    if spec.get("unschedulable"):
        taints.append(UNSCHEDULABLE_TAINT)
    return taints


def _expression(expr: Mapping[str, Any], value: str | None) -> bool:
    op, values = expr.get("operator"), expr.get("values") or []
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, want = int(value), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def node_allows(constraints: Constraints, node: Mapping[str, Any]) -> str | None:
    """Why ``node`` is excluded for pods with these constraints ("taint", "nodeSelector",
    "affinity"), or None when it may be used."""
    tolerations = json.loads(constraints.tolerations)
    for taint in blocking_taints(node):
        if not any(tolerates(t, taint) for t in tolerations):
            return "taint"
    labels = node.get("metadata", {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in json.loads(constraints.node_selector).items()):
        return "nodeSelector"
    terms = json.loads(constraints.affinity)
    if terms:
        name = node.get("metadata", {}).get("name")

        def term_ok(term: Mapping[str, Any]) -> bool:
            exprs = term.get("matchExpressions") or []
            fields = term.get("matchFields") or []
            if not exprs and not fields:
                return False  # an empty term matches nothing
            return all(_expression(e, labels.get(e.get("key", ""))) for e in exprs) and all(
                _expression(f, name if f.get("key") == "metadata.name" else None) for f in fields
            )

        if not any(term_ok(t) for t in terms):
            return "affinity"
    return None
