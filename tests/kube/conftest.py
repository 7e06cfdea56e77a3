"""Fixtures for tests against a real control plane (etcd, kube-apiserver, KCM, kube-scheduler, kwok).

One cluster per test session, owned by the pytest process (its processes die with it, even on
SIGKILL); a fresh namespace per test; `apply` for manifests from deploy/. If the control-plane binaries
are missing they are built before the first test (`railnet.dev.k8sbin`); if that fails, every kube test
fails with the reason — they are never skipped.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient

from railnet.dev import k8sbin
from railnet.dev.devcluster import DevCluster, DevClusterError, NodeSet
from tests.kube import kubeutil

KUBE_DIR = Path(__file__).resolve().parent
NODES = 4
GPUS_PER_NODE = 8
_build_error: str | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _build_error
    ours = [i for i in items if KUBE_DIR in Path(str(i.fspath)).parents]
    for item in ours:
        item.add_marker(pytest.mark.kube)
    # Build here rather than in a fixture: a first build takes many minutes and must not run
    # under the per-test timeout.
    if ours and k8sbin.missing():
        try:
            k8sbin.build(log=lambda msg: print(msg, flush=True))
        except k8sbin.BuildError as exc:
            _build_error = str(exc)


@pytest.fixture(scope="session")
def cluster() -> Iterator[DevCluster]:
    if _build_error:
        pytest.fail(f"cannot build the control-plane binaries: {_build_error}", pytrace=False)
    dev = DevCluster(f"pytest-{os.getpid()}", owner=True)
    nodes = NodeSet(
        count=NODES,
        labels={"railnet.io/rack": "rack-{i}"},
        capacity={"nvidia.com/gpu": str(GPUS_PER_NODE), "rdma/roce": str(GPUS_PER_NODE)},
    )
    try:
        dev.up(nodes, log=lambda msg: None)
    except (DevClusterError, k8sbin.BuildError) as exc:
        pytest.fail(f"dev cluster did not start: {exc}", pytrace=False)
    try:
        yield dev
    finally:
        dev.down(log=lambda msg: None)
        assert not dev.dir.exists(), f"dev cluster left {dev.dir} behind"


@pytest.fixture(scope="session")
def api_client(cluster: DevCluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def dyn(api_client: client.ApiClient) -> DynamicClient:
    return DynamicClient(api_client)


@pytest.fixture(scope="session")
def railnet_crds(dyn: DynamicClient) -> list[dict[str, Any]]:
    """The CRDs from deploy/crds, installed (and Established) once per session."""
    docs = kubeutil.load(sorted((kubeutil.DEPLOY / "crds").glob("*.yaml")))
    kubeutil.apply(dyn, docs)
    return docs


@pytest.fixture
def namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, with its default ServiceAccount ready; deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def default_sa() -> bool:
        return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items)

    kubeutil.wait_for(default_sa, 30, f"ServiceAccount {name}/default")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def apply(dyn: DynamicClient, namespace: str) -> Callable[..., list[Any]]:
    """apply(*paths_or_docs, dry_run=False): server-side apply deploy/ manifests into the test namespace.

    Relative paths are taken from deploy/; dicts are applied as they are.
    """

    def _apply(*items: str | Path | dict[str, Any], dry_run: bool = False) -> list[Any]:
        docs: list[dict[str, Any]] = []
        for item in items:
            if isinstance(item, dict):
                docs.append(item)
            else:
                path = Path(item)
                docs += kubeutil.load([path if path.is_absolute() else kubeutil.DEPLOY / path])
        return kubeutil.apply(dyn, docs, namespace=namespace, dry_run=dry_run)

    return _apply
