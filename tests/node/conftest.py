"""Fixtures for tests on the real node: containerd + runc + kubelet + kube-proxy + CoreDNS on this machine.

One dev cluster with a real node per test module (only one real node can run on a machine at a time),
owned by the pytest process. Binaries and images are built during collection, not under the per-test
timeout; if anything cannot be built or the node does not come up, the tests fail with the reason —
they are never skipped. At the end the cluster is brought down and the machine is checked for leftovers:
processes, mounts, cgroups, the bridge, shim sockets, iptables rules and nftables tables.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from railnet.dev import images, k8sbin, node
from railnet.dev.devcluster import DevCluster, DevClusterError, NodeSet
from tests.kube.kubeutil import wait_for

NODE_TESTS = Path(__file__).resolve().parent
_build_error: str | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _build_error
    ours = [i for i in items if NODE_TESTS in Path(str(i.fspath)).parents]
    for item in ours:
        item.add_marker(pytest.mark.node)
    if not ours:
        return
    try:
        if k8sbin.missing():
            k8sbin.build(log=lambda msg: print(msg, flush=True))
        images.build_all(log=lambda msg: print(msg, flush=True))
        if any("image" in getattr(i, "fixturenames", ()) for i in ours):
            # railnet's own image (test_install, test_chart_controllers): its first build takes minutes,
            # which must not count against the first test's timeout; the fixture then finds it cached
            from railnet.dev import railnet_image

            railnet_image.build(log=lambda msg: print(msg, flush=True))
    except (k8sbin.BuildError, images.ImageError) as exc:
        _build_error = str(exc)


class RealNode:
    """The cluster, its node layout, a client, and kubectl."""

    def __init__(self, cluster: DevCluster, before: dict[str, object]) -> None:
        self.cluster = cluster
        self.layout = node.Layout(cluster.dir, cluster.name)
        self.before = before
        self.name = self.layout.node_name
        self.api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)

    @property
    def info(self) -> dict[str, object]:
        return dict(self.cluster.state()["node"])

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(k8sbin.bin_dir() / "kubectl"), f"--kubeconfig={self.cluster.kubeconfig}",
                               "--request-timeout=60s", *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc


@pytest.fixture(scope="module")
def real_node() -> Iterator[RealNode]:
    if _build_error:
        pytest.fail(f"cannot build what the real node needs: {_build_error}", pytrace=False)
    dev = DevCluster(f"pytest-node-{os.getpid()}", owner=True)
    before = node.host_state()
    try:
        dev.up(NodeSet(count=1), log=lambda msg: None, real_node=True)
    except (DevClusterError, k8sbin.BuildError, node.NodeError, images.ImageError) as exc:
        pytest.fail(f"the real node did not come up: {exc}", pytrace=False)
    rn = RealNode(dev, before)
    try:
        yield rn
    finally:
        rn.api_client.close()
        layout = rn.layout
        dev.down(log=lambda msg: None)
        left = node.leftovers(layout, before)
        assert not left, f"the real node left {left}"
        assert not dev.dir.exists(), f"dev cluster left {dev.dir} behind"


@pytest.fixture
def ns(real_node: RealNode, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:30].strip("-")
    name = f"n-{slug}-{uuid.uuid4().hex[:5]}"
    core = real_node.core
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
             60, f"ServiceAccount {name}/default")
    yield name
    if real_node.cluster.state():
        core.delete_namespace(name, propagation_policy="Background", grace_period_seconds=0)
