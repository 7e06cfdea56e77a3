"""The node agent publishes its NodeTopology (issue 12, item 2): an agent with --kubeconfig and
--publish-topology on a fixture server's sysfs creates the object, owned by its Node."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client

from railnet.dev.devcluster import DevCluster
from railnet.dev.fixtures import build_fixture
from railnet.dev.lab import AgentProcess
from tests.kube import kubeutil

GROUP, VERSION, PLURAL = "railnet.io", "v1alpha1", "nodetopologies"


def test_agent_publishes_its_node_topology(cluster: DevCluster, railnet_crds: list[dict[str, Any]],
                                           core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    name = f"rn-topo-{uuid.uuid4().hex[:6]}"
    node = core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    with tempfile.TemporaryDirectory(prefix="rn-topo-") as tmp:
        root = Path(tmp)
        build_fixture("hgx-h100", root / "sys")
        agent = AgentProcess(root / "agent", sysfs=root / "sys")
        agent.args = ["--kubeconfig", str(cluster.kubeconfig), "--node-name", name, "--publish-topology", "300",
                      "--reconcile-interval", "0"]
        try:
            agent.start()

            def published() -> dict[str, Any] | None:
                try:
                    return dict(custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name))
                except client.ApiException:
                    return None

            kubeutil.wait_for(lambda: published() is not None, 60, f"NodeTopology {name}")
            obj = published()
            assert obj is not None
            assert len(obj["spec"]["gpus"]) == 8 and len(obj["spec"]["nics"]) == 8
            assert obj["metadata"]["ownerReferences"][0]["uid"] == node.metadata.uid
        finally:
            agent.stop()
            core.delete_node(name)
            with contextlib.suppress(client.ApiException):
                custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
