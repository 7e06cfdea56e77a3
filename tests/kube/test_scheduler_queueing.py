"""Starvation-free queueing on the real API server: a 64-GPU gang (8 x 8 GPUs) behind a steady stream of
1-GPU pods on a 9-node cluster.

The stream is adversarial on purpose: each 1-GPU pod is pinned to the next node in turn and lives 4 s,
while every node gets a new one every 2.25 s, so every node always runs one and no 8 nodes are ever
empty together. First a scheduler without reservation (``--no-reservation``) runs for a while: the
gang must still be waiting (the control, so the test can fail). Then a scheduler with reservation
takes over: the gang holds the freest nodes as they drain, the stream backfills the ninth node, and
the gang must be bound within ``BOUND_S`` of that scheduler's start.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from railnet.dev.devcluster import DevCluster
from scheduler.live.objects import POD_GROUP_LABEL
from tests.kube import kubeutil
from tests.kube.test_scheduler_live import Env

NODES = 9
PERIOD_S = 0.25  # one stream pod per period, to the next node in turn
LIFETIME_S = 4.0  # > NODES * PERIOD_S: a node's next pod arrives before its last one ends
CONTROL_S = 12.0  # how long the gang must starve without reservation
BOUND_S = 45.0  # the gang is bound within this of the reserving scheduler's start (expected: a few s)


class Stream(threading.Thread):
    def __init__(self, env: Env, nodes: list[str]) -> None:
        super().__init__(daemon=True, name="stream")
        self.env, self.nodes = env, nodes
        self.stop = threading.Event()
        self.created: dict[str, tuple[float, str]] = {}  # pod -> (monotonic creation, node)
        self.errors: list[str] = []

    def run(self) -> None:
        i = 0
        alive: list[tuple[float, str]] = []
        while not self.stop.is_set():
            now = time.monotonic()
            while alive and now - alive[0][0] > LIFETIME_S:
                _, name = alive.pop(0)
                self.env.api.request("DELETE", f"/api/v1/namespaces/{self.env.ns}/pods/{name}?gracePeriodSeconds=0")
            name, node = f"s{i:04d}", self.nodes[i % len(self.nodes)]
            try:
                self.env.pod(name, on=node)
            except AssertionError as exc:
                self.errors.append(str(exc))
            self.created[name] = (now, node)
            alive.append((now, name))
            i += 1
            self.stop.wait(max(PERIOD_S - (time.monotonic() - now), 0.0))


@pytest.fixture
def env(cluster: DevCluster, namespace: str, railnet_crds: Any, tmp_path: Path, dyn: Any) -> Any:
    kubeutil.apply(dyn, kubeutil.load(sorted((kubeutil.DEPLOY / "scheduler" / "crds").glob("*.yaml"))))
    world = Env(cluster, namespace, tmp_path)
    try:
        yield world
    finally:
        world.close()


def test_big_gang_is_not_starved_by_a_stream_of_small_pods(env: Env) -> None:
    nodes = env.add_nodes(NODES)  # 72 GPUs
    control = env.start("--no-reservation", "--no-leader-elect")
    stream = Stream(env, nodes)
    stream.start()
    try:
        kubeutil.wait_for(lambda: {p["spec"]["nodeName"] for p in env.bound().values()} == set(nodes) or None,
                          120, "a stream pod on every node")
        env.api.request("POST", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{env.ns}/podgroups", {
            "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": "big"},
            "spec": {"minMember": 8}})
        for i in range(8):
            env.pod(f"big-{i}", gpus=8, nics=8, labels={POD_GROUP_LABEL: "big"})
        env.wait_event("big-0", "0 of 8 members fit")
        time.sleep(CONTROL_S)
        assert not [n for n in env.bound() if n.startswith("big")], "the gang fit without a reservation"
        control.kill()
        control.wait(10)

        started = time.monotonic()
        reserving = env.start("--no-leader-elect")
        kubeutil.wait_for(lambda: len([n for n in env.bound() if n.startswith("big")]) == 8 or None, BOUND_S,
                          f"the 64-GPU gang bound within {BOUND_S:.0f}s of the reserving scheduler's start")
        waited = time.monotonic() - started
        held = env.wait_event("big-0", "holding 8 nodes as they free up")
        assert held["reason"] == "FailedScheduling"
        bound = env.bound()
        gang_nodes = {p["spec"]["nodeName"] for n, p in bound.items() if n.startswith("big")}
        assert len(gang_nodes) == 8
        # the stream kept running on the node the gang did not need (backfill, not a strict FIFO)
        [spare] = set(nodes) - gang_nodes
        backfilled = [n for n, p in bound.items() if n in stream.created and p["spec"]["nodeName"] == spare
                      and stream.created[n][0] > started]
        assert backfilled, "no stream pod was bound on the unreserved node while the gang waited"
        assert not stream.errors, stream.errors[:3]
        used = [r for r in env.logs(reserving) if r.get("msg") == "reservation used"]
        assert [r.get("unit") for r in used] == [f"{env.ns}/big"], used
        print(f"gang bound {waited:.1f}s after the reserving scheduler started")
    finally:
        stream.stop.set()
        stream.join(10)
