"""Publish this node's NodeTopology (railnet.io/v1alpha1, object name = node name) for the scheduler.

get / create / replace with the resourceVersion that was read, so two agents racing on one node
(a restart overlapping its predecessor) cannot silently overwrite each other: the loser gets a 409
and retries from a fresh read. The object is owned by the Node, so it goes when the node goes.
Wire it into the agent at start-up and whenever discovery's result changes:

    from netmanager.topology_publisher import publish_from_discovery
    publish_from_discovery(CustomObjectsApi(api_client), CoreV1Api(api_client), node_name)
"""

from __future__ import annotations

import os
from typing import Any

from netmanager.topology.discover import discover
from netmanager.topology.model import NodeTopology

GROUP, VERSION, PLURAL = "railnet.io", "v1alpha1", "nodetopologies"


def topology_object(topology: NodeTopology, node_uid: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": topology.node_name, "labels": {"app.kubernetes.io/part-of": "railnet"}}
    if node_uid:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": topology.node_name, "uid": node_uid}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeTopology", "metadata": meta,
            "spec": topology.model_dump(by_alias=True, mode="json")}


def _normal(value: Any) -> Any:
    """The JSON the server keeps: string map keys, no nulls (the schema prunes them)."""
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def publish(custom: Any, topology: NodeTopology, node_uid: str | None = None, attempts: int = 5) -> str:
    """Create or update the NodeTopology; returns "created", "updated" or "unchanged".

    ``custom`` is a ``kubernetes.client.CustomObjectsApi``."""
    from kubernetes.client.exceptions import ApiException

    body = topology_object(topology, node_uid)
    for _ in range(attempts):
        try:
            current = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, topology.node_name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
                return "created"
            except ApiException as create_exc:
                if create_exc.status == 409:
                    continue  # someone created it meanwhile: read it and update
                raise
        if _normal(current.get("spec")) == _normal(body["spec"]):
            return "unchanged"
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            custom.replace_cluster_custom_object(GROUP, VERSION, PLURAL, topology.node_name, body)
            return "updated"
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"NodeTopology {topology.node_name}: gave up after {attempts} conflicting writes")


def publish_from_discovery(custom: Any, core: Any | None = None, node_name: str | None = None,
                           sysfs_root: str = "/sys", nvidia_smi_text: str | None = None) -> str:
    """Discover this node's topology and publish it (owned by the Node when ``core`` is given)."""
    name = node_name or os.environ.get("NODE_NAME")
    topology = discover(sysfs_root, nvidia_smi_text=nvidia_smi_text, node_name=name)
    uid = core.read_node(topology.node_name).metadata.uid if core is not None else None
    return publish(custom, topology, uid)
