"""kwok nodes with real topologies: NodeTopology objects built from the fixture servers.

The dev cluster's kwok nodes advertise only counts; the tests and the scheduler benchmark use this
helper to create nodes whose ``nvidia.com/gpu`` / ``rdma/roce`` match a fixture server (hgx-h100:
8 GPUs + 8 RoCE NICs) and the matching NodeTopology, so the scheduler sees real tiers. Nodes made
without it have no NodeTopology and are scheduled by counts only.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

from railnet.dev.devcluster import NodeSet

REPO = Path(__file__).resolve().parents[2]
CRDS = ("crds/nodetopologies.railnet.io.yaml", "scheduler/crds/podgroups.scheduling.x-k8s.io.yaml")
TOPOLOGIES = "/apis/railnet.io/v1alpha1/nodetopologies"


class Requester(Protocol):
    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]: ...


@functools.cache
def fixture_spec(fixture: str = "hgx-h100") -> dict[str, Any]:
    """The NodeTopology spec discovered from a fixture server's sysfs tree (node name left blank)."""
    from netmanager.topology.discover import discover
    from railnet.dev.fixtures import build_fixture, nvidia_smi_topo

    with tempfile.TemporaryDirectory() as tmp:
        built = build_fixture(fixture, Path(tmp) / "sys")
        topo = discover(built.root, nvidia_smi_text=nvidia_smi_topo(built), node_name="fixture")
        return topo.model_dump(by_alias=True, mode="json")


def node_set(prefix: str, count: int, fixture: str | None = "hgx-h100", labels: dict[str, str] | None = None,
             taints: list[dict[str, str]] | None = None, gpus: int = 8, nics: int = 8) -> NodeSet:
    """kwok nodes whose GPU / RoCE counts match ``fixture`` (or the given counts when None)."""
    if fixture:
        spec = fixture_spec(fixture)
        gpus, nics = len(spec["gpus"]), len(spec["nics"])
    return NodeSet(count=count, prefix=prefix, labels=labels or {}, taints=taints or [],
                   capacity={"nvidia.com/gpu": str(gpus), "rdma/roce": str(nics)})


def topology_object(node: str, fixture: str = "hgx-h100") -> dict[str, Any]:
    spec = copy.deepcopy(fixture_spec(fixture))
    spec["nodeName"] = node
    return {"apiVersion": "railnet.io/v1alpha1", "kind": "NodeTopology", "metadata": {"name": node}, "spec": spec}


def publish(api: Requester, nodes: Iterable[str], fixture: str = "hgx-h100", workers: int = 8) -> None:
    """Create (or replace) the NodeTopology of each node."""

    def one(node: str) -> None:
        body = topology_object(node, fixture)
        status, answer = api.request("POST", TOPOLOGIES, body)
        if status == 409:
            status, current = api.request("GET", f"{TOPOLOGIES}/{node}")
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            status, answer = api.request("PUT", f"{TOPOLOGIES}/{node}", body)
        if status not in (200, 201):
            raise RuntimeError(f"NodeTopology {node}: HTTP {status}: {answer}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, nodes))


def delete(api: Requester, nodes: Iterable[str], workers: int = 8) -> None:
    """Delete nodes and their NodeTopology objects (missing ones are fine)."""

    def one(node: str) -> None:
        api.request("DELETE", f"/api/v1/nodes/{node}")
        api.request("DELETE", f"{TOPOLOGIES}/{node}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, nodes))


def install_crds(api: Requester) -> None:
    """Create the NodeTopology and PodGroup CRDs (for clusters not set up by the test fixtures)."""
    import time

    for name in CRDS:
        doc = yaml.safe_load((REPO / "deploy" / name).read_text())
        status, answer = api.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
        if status not in (201, 409):
            raise RuntimeError(f"CRD {name}: HTTP {status}: {answer}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, crd = api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{doc['metadata']['name']}")
            conds = (crd.get("status") or {}).get("conditions") or [] if isinstance(crd, dict) else []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                break
            time.sleep(0.2)
