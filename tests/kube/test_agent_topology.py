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
from railnet.dev.lab import AgentProcess, Lab
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


def test_a_link_change_republishes_at_once(cluster: DevCluster, railnet_crds: list[dict[str, Any]],
                                           core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    """With a periodic interval of an hour, a NIC whose speed changed (in the fixture) is republished
    within seconds of a network link event on the host (a veth pair created by the test)."""
    name = f"rn-topo-{uuid.uuid4().hex[:6]}"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    with tempfile.TemporaryDirectory(prefix="rn-topo-") as tmp, Lab("rntl") as lab:
        root = Path(tmp)
        build_fixture("hgx-h100", root / "sys")
        agent = AgentProcess(root / "agent", sysfs=root / "sys")
        agent.args = ["--kubeconfig", str(cluster.kubeconfig), "--node-name", name, "--publish-topology", "3600",
                      "--reconcile-interval", "0"]

        def speed_of_mlx5_0() -> int | None:
            try:
                obj = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            except client.ApiException:
                return None
            return next(n["speedMbps"] for n in obj["spec"]["nics"] if n["rdmaDevice"] == "mlx5_0")

        try:
            agent.start()
            kubeutil.wait_for(lambda: speed_of_mlx5_0() == 400000, 60, f"NodeTopology {name} at 400G")
            (root / "sys/class/infiniband/mlx5_0/ports/1/rate").write_text("200 Gb/sec (4X HDR)\n")
            lab.nic("ev")  # a link appears on the host: the kernel announces it
            kubeutil.wait_for(lambda: speed_of_mlx5_0() == 200000, 15, "the change republished after the link event")
        finally:
            agent.stop()
            core.delete_node(name)
            with contextlib.suppress(client.ApiException):
                custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)


def test_agent_publishes_the_ports_host_processes_listen_on(cluster: DevCluster, core: client.CoreV1Api) -> None:
    """A listener opened on the host appears in the Node's railnet.io/host-listeners (the format the job
    controller reads) and leaves it when closed."""
    import socket

    from jobs.ports import parse_ports
    from netmanager.host_listeners import ANNOTATION

    name = f"rn-listen-{uuid.uuid4().hex[:6]}"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def published() -> set[int]:
        text = (core.read_node(name).metadata.annotations or {}).get(ANNOTATION)
        return parse_ports(text) if text else set()

    with tempfile.TemporaryDirectory(prefix="rn-listen-") as tmp:
        agent = AgentProcess(Path(tmp) / "agent")
        agent.args = ["--kubeconfig", str(cluster.kubeconfig), "--node-name", name,
                      "--publish-host-listeners", "0.5", "--reconcile-interval", "0"]
        try:
            agent.start()
            kubeutil.wait_for(lambda: port in published(), 30, f"port {port} in {ANNOTATION}")
            listener.close()
            kubeutil.wait_for(lambda: port not in published(), 30, f"port {port} gone from {ANNOTATION}")
        finally:
            listener.close()
            agent.stop()
            core.delete_node(name)
