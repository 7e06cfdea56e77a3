"""The networks annotation for replica pods that ask for RoCE rails (pure).

A replica whose containers request the rail resource (``rdma/roce``, the resource railnet's scheduler
pairs with GPUs: ``scheduler/live/objects.py RDMA_RESOURCES``, counted with its ``pod_resources``) gets
Multus's ``k8s.v1.cni.cncf.io/networks`` annotation naming the rail networks, e.g. ``"rail"``. Each is a
NetworkAttachmentDefinition whose first plugin says ``"rail": "auto"``: railnet's meta plugin then
attaches one interface per NIC of the pod's ``railnet.io/allocation`` annotation, which railnet's
scheduler writes when it binds the pod (docs/cni.md step 3, docs/allocation.md). So the annotation
only names the networks; how many interfaces and on which NICs follows the allocation.

The networks come from the controller's ``--rail-networks`` or, per job, the annotation
``railnet.io/rail-networks`` (``""`` turns it off for the job). A template that already sets the
networks annotation keeps its own. Only pods railnet's scheduler places get it (without an allocation
the meta plugin refuses a ``rail: auto`` network); the others are reported, not annotated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from scheduler.live import objects

RAIL_NETWORKS = "railnet.io/rail-networks"  # on a job: rail networks of its pods ("" = none)
NETWORKS = "k8s.v1.cni.cncf.io/networks"  # Multus's selection annotation, read by railnet's meta plugin
RAIL_RESOURCES = objects.RDMA_RESOURCES  # the scheduler's default rail resource ("rdma/roce")
_NAME = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_SELECTION = re.compile(rf"^({_NAME}/)?{_NAME}(@[A-Za-z0-9_.-]{{1,15}})?$")


def parse_networks(text: str) -> tuple[str, ...]:
    """``"rail, team/rail2@roce"`` -> ("rail", "team/rail2@roce"): Multus's text form, each entry
    ``[namespace/]name[@interface]``; raises ValueError saying what is wrong."""
    out: list[str] = []
    for part in text.split(","):
        entry = part.strip()
        if not entry:
            continue
        if not _SELECTION.match(entry):
            raise ValueError(f"{entry!r} is not a NetworkAttachmentDefinition selection "
                             "([namespace/]name[@interface], lower-case DNS names)")
        out.append(entry)
    return tuple(out)


def rails_requested(pod_spec: dict[str, Any], resources: Sequence[str] = objects.RDMA_RESOURCES) -> int:
    """How many rail NICs the pod asks for (the scheduler's own count)."""
    return objects.pod_resources({"spec": pod_spec}, rdma=resources).rdma


def annotate(pod: dict[str, Any], networks: Sequence[str], resources: Sequence[str] = objects.RDMA_RESOURCES,
             scheduler_name: str | None = None) -> str | None:
    """Set the networks annotation on ``pod`` when it asks for rails and ``networks`` is not empty.

    Returns why it was not set although the pod asks for rails (for an event), else None."""
    if not networks or rails_requested(pod["spec"], resources) == 0:
        return None
    annotations = pod["metadata"].setdefault("annotations", {})
    if NETWORKS in annotations:
        return None  # the user's own selection wins
    if scheduler_name is not None and pod["spec"].get("schedulerName") != scheduler_name:
        return (f"{pod['metadata']['name']} asks for rails but is not scheduled by {scheduler_name}, which "
                f"writes the allocation the rail networks need: turn gang scheduling on (annotation "
                f"railnet.io/gang-scheduling: \"true\") or set schedulerName: {scheduler_name}")
    annotations[NETWORKS] = ", ".join(networks)
    return None
