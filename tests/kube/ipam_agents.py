"""Several railnet agents on this machine, each playing one node of the dev cluster's IPAM."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client

from ipam.crd import BLOCK_PLURAL, GROUP, PLURAL, POOL_LABEL, VERSION
from railnet.dev.lab import AgentProcess, PluginCall, run_plugin


def conf(pool: str, network: str = "railnet-test") -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": network, "ipam": {"type": "railnet-ipam", "pool": pool},
            "type": "railnet-ipam"}


class Nodes:
    """N agents with their own node name and state dir, Node objects for them, and the shim."""

    def __init__(self, kubeconfig: Path, core: client.CoreV1Api, count: int, grace: float = 1.0,
                 extra: list[str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="railnet-ipam-"))
        self.core = core
        self.tag = uuid.uuid4().hex[:5]
        self.names = [f"ipam-{self.tag}-n{i}" for i in range(count)]
        self.kubeconfig = kubeconfig
        self.grace = grace
        self.extra = extra or []  # more agent flags, e.g. the reconcile interval
        self.agents: list[AgentProcess] = []
        from cni.install import install
        self.bin = self.tmp / "bin"
        install(self.bin, "auto")

    def start(self, labels: dict[str, str] | None = None, env: dict[str, str] | None = None) -> Nodes:
        for name in self.names:
            self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels or {})))
        for name in self.names:
            agent = AgentProcess(self.tmp / name, self.tmp / "nopools")
            agent.args = ["--kubeconfig", str(self.kubeconfig), "--node-name", name,
                          "--block-grace", str(self.grace), *self.extra]
            agent.start(env=env)
            self.agents.append(agent)
        return self

    def restart(self, i: int, env: dict[str, str] | None = None) -> None:
        """SIGKILL agent i (if running) and start it again on the same state dir."""
        self.agents[i].kill()
        self.agents[i].start(env=env)

    def call(self, i: int, command: str, pool: str, cid: str, *, network: str = "railnet-test",
             args: str = "", netns: str = "/proc/self/ns/net") -> PluginCall:
        return run_plugin(self.bin / "railnet-ipam", command, conf(pool, network), container_id=cid,
                          ifname="net1", netns=netns, env=self.agents[i].env(), args=args)

    def many(self, command: str, pool: str, per_node: int, workers: int = 10) -> list[PluginCall]:
        jobs = [(i, f"c-{self.tag}-{i}-{j}") for j in range(per_node) for i in range(len(self.agents))]
        with ThreadPoolExecutor(workers) as ex:
            return list(ex.map(lambda job: self.call(job[0], command, pool, job[1]), jobs))

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        for name in self.names:
            with contextlib.suppress(client.ApiException):
                self.core.delete_node(name)
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def pool(custom: client.CustomObjectsApi, name: str, spec: dict[str, Any]) -> Iterator[str]:
    """An IPPool for one test; it and every block of it are deleted afterwards."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "IPPool", "metadata": {"name": name}, "spec": spec}
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
    try:
        yield name
    finally:
        custom.delete_collection_cluster_custom_object(GROUP, VERSION, BLOCK_PLURAL,
                                                       label_selector=f"{POOL_LABEL}={name}")
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
