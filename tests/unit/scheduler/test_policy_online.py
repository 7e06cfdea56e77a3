"""railnet's policy learns only from arrived pods, and live single-pod placement uses it."""

from __future__ import annotations

import random

import pytest

from scheduler.gang import Gang, plan_gang
from scheduler.model import Allocation, Cluster, Node, PodSpec, new_node
from scheduler.policies import Hint, RailnetPolicy, Score, live_policy
from scheduler.replay import ReplayEngine
from scheduler.synthetic import hgx_like
from scheduler.view import ClusterView


def lean_and_rich() -> list[Node]:
    # lean: CPU for exactly its 4 GPUs at 8 cores per GPU; rich: CPU and no GPUs
    return [new_node(0, "lean", 32_000, 64_000, "G2", 4), new_node(1, "rich", 32_000, 64_000, "G2", 0)]


HOG = PodSpec("cpu-hog", 16_000, 100)


def decisions(nodes: list[Node], pods: list[PodSpec], policy: RailnetPolicy) -> list[Allocation | None]:
    engine = ReplayEngine(nodes, policy, random.Random(0))
    return [engine.place(pod) for pod in pods]


def tail(cpu_per_gpu: int, count: int = 8) -> list[PodSpec]:
    return [PodSpec(f"t{i}", cpu_per_gpu, 100, 1, 1000) for i in range(count)]


def test_decision_for_pod_k_ignores_pods_after_k() -> None:
    """The CPU hog arrives first; what arrives after it must not change where it goes."""
    cpu_heavy = decisions(lean_and_rich(), [HOG, *tail(8_000)], RailnetPolicy())
    cpu_light = decisions(lean_and_rich(), [HOG, *tail(0)], RailnetPolicy())
    assert cpu_heavy[0] == cpu_light[0]


def test_the_same_check_catches_a_policy_that_reads_ahead() -> None:
    """Sensitivity of the test above: a policy fed the whole trace first decides differently."""
    placed = []
    for cpu in (8_000, 0):
        pods = [HOG, *tail(cpu)]
        policy = RailnetPolicy()
        engine = ReplayEngine(lean_and_rich(), policy, random.Random(0))
        for pod in pods:  # reading ahead: the whole trace before the first decision
            policy.observe(pod)
        policy.observe = lambda pod: False  # type: ignore[method-assign]
        alloc = engine.place(pods[0])
        assert alloc is not None
        placed.append(alloc.node)
    assert placed == [1, 0]  # 8 cores per GPU ahead: the hog avoids stranding the lean node's GPUs


@pytest.mark.parametrize("seed", range(4))
def test_random_traces_prefix_decisions_do_not_depend_on_the_suffix(seed: int) -> None:
    rng = random.Random(seed)

    def pod(name: str) -> PodSpec:
        gpus = rng.choice((0, 1, 1, 2, 4))
        milli = rng.choice((250, 500, 1000)) if gpus == 1 else (1000 if gpus else 0)
        return PodSpec(name, rng.choice((2_000, 8_000, 24_000)), rng.choice((1_000, 30_000)), gpus, milli)

    def nodes() -> list[Node]:
        return [
            new_node(
                i, f"n{i}", 64_000 if i % 2 else 32_000, 256_000, "G2", 8, hgx_like() if i % 3 == 0 else None
            )
            for i in range(12)
        ]

    k = 40
    prefix = [pod(f"p{i}") for i in range(k + 1)]
    first = decisions(nodes(), prefix + [pod(f"a{i}") for i in range(60)], RailnetPolicy(refresh_every=8))
    second = decisions(nodes(), prefix + [pod(f"b{i}") for i in range(60)], RailnetPolicy(refresh_every=8))
    assert first[: k + 1] == second[: k + 1]


class Loosest:
    """A spy policy that prefers the node with the most free GPUs (the opposite of best fit)."""

    name = "loosest"
    uniform = False

    def __init__(self) -> None:
        self.seen: list[str] = []

    def reset(self) -> None: ...

    def observe(self, pod: PodSpec) -> bool:
        self.seen.append(pod.name)
        return False

    def evaluate(self, node: Node, pod: PodSpec) -> tuple[Score, Hint] | None:
        return ((float(node.whole_free.bit_count()),), None) if node.fits_host(pod) else None

    def allocate(self, node: Node, pod: PodSpec, hint: Hint, rng: random.Random) -> Allocation | None:
        free = [i for i in range(node.gpu_count) if node.whole_free >> i & 1][: pod.whole_gpus]
        return Allocation(pod.name, node.index, pod.cpu_milli, pod.memory_mib, tuple(free), 1000)


def test_single_pod_placement_goes_through_the_policy() -> None:
    cluster = Cluster(
        [new_node(0, "a", 64_000, 256_000, "G2", 2), new_node(1, "b", 64_000, 256_000, "G2", 8)]
    )
    spy = Loosest()
    plan = plan_gang(ClusterView(cluster), Gang("one", (PodSpec("w", 1000, 10, 1, 1000),)), spy)
    assert plan is not None and plan.allocations[0].node == 1  # best fit would take node 0
    assert spy.seen == ["w"] and plan.allocations[0].group == "one"


def test_live_placement_uses_railnet_policy_by_default() -> None:
    """Without a policy argument, a one-pod job is placed by the cluster's railnet policy: after
    GPU pods asking 8 cores per GPU, a CPU hog goes to the GPU-less node (first fit would not)."""
    cluster = Cluster(lean_and_rich())
    policy = live_policy(cluster)
    assert isinstance(policy, RailnetPolicy) and live_policy(cluster) is policy
    for pod in tail(8_000, 3):
        policy.observe(pod)
    plan = plan_gang(ClusterView(cluster), Gang("hog", (HOG,)))
    assert plan is not None and plan.allocations[0].node == 1
    assert policy.workload.pods == 4  # it learned from the hog too
