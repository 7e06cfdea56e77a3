"""Fixture DRA slices for tests: GPUs of a test-only driver and railnet's RDMA NICs, from one fixture topology.

No GPU driver runs here; these builders give the scheduler and kube-scheduler something to allocate
on kwok nodes (slices only), and give a real-node fixture GPU driver its slice. The GPUs and the NICs
come from the same fixture server's NodeTopology (`railnet.dev.kwok_topology.fixture_spec`), so their
`resource.kubernetes.io/pciBusID` values are the addresses in the NodeTopology the scheduler places on.

The fixture GPU driver is `gpu.fixture.railnet.io` (DRIVER). One device per GPU, named `gpu-<index>`:

| attribute | type | value |
|---|---|---|
| `resource.kubernetes.io/pcieRoot` | string | the GPU's root complex, `pci0000:15` |
| `resource.kubernetes.io/pciBusID` | string | the GPU's BDF, `0000:18:00.0` |
| `resource.kubernetes.io/numaNode` | int | its NUMA node (absent when unknown) |
| `rdma.railnet.io/pcieSwitch` | string | upstream port of the top-level switch above it: the very name railnet's NIC slice uses, so `matchAttribute: rdma.railnet.io/pcieSwitch` can align a GPU and a NIC (names must be identical across drivers) |
| `gpu.fixture.railnet.io/index` | int | nvidia-smi's index |
| `gpu.fixture.railnet.io/pcieSwitch` | string | the same switch under the driver's own name |
| `gpu.fixture.railnet.io/socket` | int | CPU socket |
| `gpu.fixture.railnet.io/model` | string | marketing name, when known |

Functions:
- `topology(node, fixture)`: the fixture's NodeTopology for `node`.
- `gpu_devices(topology)`, `gpu_slice(node, topology)`: the GPU slice (`<node>-gpu.fixture.railnet.io`,
  pool = node name, one slice per pool).
- `nic_slice(node, topology)`: railnet's NIC slice, built by `netmanager.dra.slices` itself (the agent's
  own builder), so it is what the agent would publish for that topology.
- `device_class(name, driver)`: a DeviceClass selecting one driver's devices.
- `install_device_classes(api)`: the classes `gpu.fixture.railnet.io` and `rdma.railnet.io`.
- `publish(api, nodes, fixture, spec)`, `delete(api, nodes)`: both slices for many (kwok) nodes, in parallel.
- `shared_roots(spec)`: a variant of a fixture's NodeTopology spec in which GPU/NIC pairs 2k and 2k+1
  sit under one PCIe root complex (two switches below one root), as on servers where
  `matchAttribute: resource.kubernetes.io/pcieRoot` does not imply the same switch (KEP-6072's
  observation). Publish it as the NodeTopology too (`publish_topologies`), so the scheduler sees it.
"""

from __future__ import annotations

import concurrent.futures
import copy
from collections.abc import Iterable, Mapping
from typing import Any, Final

from netmanager.dra import DRIVER as NIC_DRIVER
from netmanager.dra import slices
from netmanager.topology.model import NodeTopology
from railnet.dev.kwok_topology import Requester, fixture_spec

DRIVER: Final = "gpu.fixture.railnet.io"
SLICES: Final = "/apis/resource.k8s.io/v1/resourceslices"
CLASSES: Final = "/apis/resource.k8s.io/v1/deviceclasses"
LABEL: Final = {"app.kubernetes.io/part-of": "railnet", "railnet.io/fixture": "dra"}


def topology(node: str, fixture: str = "hgx-h100", spec: Mapping[str, Any] | None = None) -> NodeTopology:
    return NodeTopology.model_validate({**(spec or fixture_spec(fixture)), "nodeName": node})


def shared_roots(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Pairs 2k, 2k+1 (GPUs and NICs by position) moved under one root complex; tiers follow."""
    out = copy.deepcopy(dict(spec))
    same_root = 2  # Tier.SAME_ROOT
    for kind in ("gpus", "nics"):
        for i in range(1, len(out[kind]), 2):
            out[kind][i]["rootComplex"] = out[kind][i - 1]["rootComplex"]
    for i, gpu in enumerate(out["gpus"]):
        for j, other in enumerate(out["gpus"]):
            if i != j and gpu["rootComplex"] == other["rootComplex"]:
                out["gpuGpu"][i][j] = min(out["gpuGpu"][i][j], same_root)
        for j, nic in enumerate(out["nics"]):
            if gpu["rootComplex"] == nic["rootComplex"] and gpu.get("pcieSwitch") != nic.get("pcieSwitch"):
                out["gpuNic"][i][j] = min(out["gpuNic"][i][j], same_root)
    return out


def publish_topologies(api: Requester, nodes: Iterable[str], spec: Mapping[str, Any], workers: int = 8) -> None:
    """NodeTopology objects from ``spec`` (kwok_topology.publish does the same from a fixture name)."""
    path = "/apis/railnet.io/v1alpha1/nodetopologies"

    def one(node: str) -> None:
        _create(api, path, {"apiVersion": "railnet.io/v1alpha1", "kind": "NodeTopology", "metadata": {"name": node},
                            "spec": {**copy.deepcopy(dict(spec)), "nodeName": node}})

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, nodes))


def gpu_devices(topo: NodeTopology) -> list[dict[str, Any]]:
    out = []
    for gpu in topo.gpus:
        attrs: dict[str, dict[str, Any]] = {slices.PCI_BUS_ID: {"string": gpu.pci_address},
                                            f"{DRIVER}/index": {"int": gpu.index}}
        if gpu.root_complex:
            attrs[slices.PCIE_ROOT] = {"string": gpu.root_complex}
        if gpu.numa_node >= 0:
            attrs[slices.NUMA_NODE] = {"int": gpu.numa_node}
        if gpu.socket >= 0:
            attrs[f"{DRIVER}/socket"] = {"int": gpu.socket}
        if gpu.pcie_switch:
            attrs[f"{NIC_DRIVER}/pcieSwitch"] = {"string": gpu.pcie_switch}
            attrs[f"{DRIVER}/pcieSwitch"] = {"string": gpu.pcie_switch}
        if gpu.model:
            attrs[f"{DRIVER}/model"] = {"string": gpu.model}
        out.append({"name": f"gpu-{gpu.index}", "attributes": attrs})
    return out


def gpu_slice(node: str, topo: NodeTopology) -> dict[str, Any]:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": f"{node}-{DRIVER}", "labels": dict(LABEL)},
            "spec": {"driver": DRIVER, "nodeName": node,
                     "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                     "devices": gpu_devices(topo)}}


def nic_slice(node: str, topo: NodeTopology) -> dict[str, Any]:
    body = slices.slice_object(node, slices.devices(topo), generation=1)
    body["metadata"]["labels"].update(LABEL)
    return body


def device_class(name: str, driver: str) -> dict[str, Any]:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": name, "labels": dict(LABEL)},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]}}


def _create(api: Requester, path: str, body: dict[str, Any]) -> None:
    status, answer = api.request("POST", path, body)
    if status == 409:  # left from an earlier run: replace it
        name = body["metadata"]["name"]
        status, current = api.request("GET", f"{path}/{name}")
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
        status, answer = api.request("PUT", f"{path}/{name}", body)
    if status not in (200, 201):
        raise RuntimeError(f"{body['kind']} {body['metadata']['name']}: HTTP {status}: {answer}")


def install_device_classes(api: Requester) -> None:
    for name, driver in ((DRIVER, DRIVER), (NIC_DRIVER, NIC_DRIVER)):
        _create(api, CLASSES, device_class(name, driver))


def publish(api: Requester, nodes: Iterable[str], fixture: str = "hgx-h100", workers: int = 8,
            spec: Mapping[str, Any] | None = None) -> None:
    """Create (or replace) the GPU and the NIC slice of each node (from ``spec`` when given)."""

    def one(node: str) -> None:
        topo = topology(node, fixture, spec)
        _create(api, SLICES, gpu_slice(node, topo))
        _create(api, SLICES, nic_slice(node, topo))

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, nodes))


def delete(api: Requester, nodes: Iterable[str], workers: int = 8) -> None:
    """Delete the nodes' fixture slices (missing ones are fine)."""

    def one(node: str) -> None:
        api.request("DELETE", f"{SLICES}/{node}-{DRIVER}")
        api.request("DELETE", f"{SLICES}/{slices.slice_name(node)}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, nodes))
