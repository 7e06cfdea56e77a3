"""Live one-pod placement through the state index decides exactly like a plain scan of every node.

The new path (``gang._plan_single``: nodes grouped by ``state_key`` in ``Cluster.states``, scores
kept across pods while the policy's ``version`` stays) is compared, decision by decision, with a
reference that scores every node with ``policies.decide`` and keeps nothing between pods. Random
sequences mix whole-GPU, GPU-share and CPU-only pods (some asking RDMA NICs, a GPU model or a
scope), views that are committed or dropped, groups of one-pod gangs planned in one view
(``plan_gangs``, so nodes the view already changed must be scored on their own), releases, and pods
the policy observes outside placement (its learned values change under the cache).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from scheduler.fragmentation import FragmentationModel, Shape
from scheduler.gang import Gang, plan_gang, plan_gangs
from scheduler.model import Allocation, Cluster, Node, PodSpec, new_node, state_key
from scheduler.policies import BestFitPolicy, FgdPolicy, Policy, RailnetPolicy, decide, live_policy
from scheduler.synthetic import hgx_like
from scheduler.topology import Scope
from scheduler.view import ClusterView


def cluster_for(rng: random.Random) -> Cluster:
    """Several identical nodes per kind (groups with many members, ties inside a group and across)."""
    kinds: list[Callable[[int], Node]] = [
        lambda i: new_node(i, f"hgx{i}", 128_000, 1_024_000, "H100", 8, hgx_like()),
        lambda i: new_node(i, f"lean{i}", 32_000, 256_000, "H100", 8, hgx_like()),
        lambda i: new_node(i, f"plain{i}", 64_000, 512_000, "A10", 4),
        lambda i: new_node(i, f"two{i}", 16_000, 128_000, "A10", 2),
        lambda i: new_node(i, f"cpu{i}", 96_000, 384_000),
    ]
    picks = [rng.randrange(len(kinds)) for _ in range(rng.randint(12, 30))]
    return Cluster([kinds[k](i) for i, k in enumerate(picks)])


def random_pod(rng: random.Random, name: str) -> PodSpec:
    kind = rng.choice(("whole", "whole", "share", "cpu"))
    cpu = rng.choice((1_000, 4_000, 8_000, 16_000))
    mem = rng.choice((1_000, 32_000, 64_000))
    models = rng.choice((frozenset(), frozenset(), frozenset({"A10"}), frozenset({"H100"})))
    if kind == "whole":
        gpus = rng.choice((1, 1, 2, 4, 8))
        nics = rng.choice((0, 0, gpus, 1))
        scope = rng.choice((Scope.ANY, Scope.ANY, Scope.SAME_SOCKET))
        preferred = rng.choice((None, Scope.SAME_NUMA))
        return PodSpec(name, cpu, mem, gpus, 1000, models, nics, scope, preferred)
    if kind == "share":
        return PodSpec(name, cpu, mem, 1, rng.choice((250, 500, 750)), models, rng.choice((0, 0, 1)))
    return PodSpec(name, cpu, mem, rdma_nics=rng.choice((0, 0, 0, 1)))


def reference(view: ClusterView, pod: PodSpec, policy: Policy) -> Allocation | None:
    """Score every node of the view with ``decide``; ties to the fewest fully free GPUs in the cluster
    (whole-GPU pods), then the lowest index. No index, no state groups, nothing cached."""
    policy.observe(pod)
    nodes = view.cluster.nodes

    def rank(index: int) -> tuple[int, ...]:
        return (nodes[index].whole_free.bit_count(), index) if pod.whole_gpus else (index,)

    chosen = decide(
        policy, pod, range(len(nodes)), lambda i: policy.evaluate(view.node(i), pod), rank, random.Random(0)
    )
    if chosen is None:
        return None
    index, hint, _ = chosen
    return policy.allocate(view.node(index), pod, hint, random.Random(0))


def reference_group(view: ClusterView, pods: list[PodSpec], policy: Policy) -> list[Allocation] | None:
    """``plan_gangs`` of one-pod gangs, by the reference: all in one view, or none."""
    trial = view.child()
    placed = []
    for pod in pods:
        alloc = reference(trial, pod, policy)
        if alloc is None:
            return None
        trial.reserve(alloc)
        placed.append(alloc)
    return placed


def fgd() -> FgdPolicy:
    shapes = [
        (Shape(4000, 1000, 1, frozenset()), 0.5),
        (Shape(8000, 500, 1, frozenset()), 0.3),
        (Shape(16000, 0, 0, frozenset()), 0.2),
    ]
    return FgdPolicy(FragmentationModel(shapes))


POLICIES: dict[str, Callable[[], Policy]] = {
    # live railnet, refreshed often so the score cache is invalidated many times per run
    "railnet": lambda: RailnetPolicy(rails_per_gpu=False, refresh_every=8),
    "fgd": fgd,  # never changes: scores are kept for the whole run
    "bestfit": BestFitPolicy,  # coarse integer scores: many ties
}


def run(seed: int, make: Callable[[], Policy] | None, steps: int = 250) -> int:
    """Random operations on one cluster; returns how many pods were compared."""
    rng = random.Random(seed)
    cluster = cluster_for(rng)
    new = live_policy(cluster) if make is None else make()
    ref: Policy = RailnetPolicy(rails_per_gpu=False) if make is None else make()
    running: list[str] = []
    compared = 0
    for step in range(steps):
        op = rng.random()
        if op < 0.12 and running:
            cluster.release(running.pop(rng.randrange(len(running))))
            continue
        if op < 0.17:  # pods seen elsewhere: the learned values move under the cache
            pod = random_pod(rng, f"seen-{step}")
            new.observe(pod)
            ref.observe(pod)
            continue
        view = ClusterView(cluster)
        if op < 0.32:  # several one-pod gangs in one view: later ones see the earlier reservations
            pods = [random_pod(rng, f"g{step}-{k}") for k in range(rng.randint(2, 4))]
            expected = reference_group(view, pods, ref)
            gangs = [Gang(pod.name, (pod,)) for pod in pods]
            plans = plan_gangs(view, gangs) if make is None else plan_gangs(view, gangs, new)
            got = None if plans is None else [replace(p.allocations[0], group="") for p in plans]
            assert got == expected, f"seed {seed} step {step}: {got} != {expected}"
            compared += len(pods)
        else:
            pod = random_pod(rng, f"p{step}")
            want = reference(view.child(), pod, ref)
            gang = Gang(pod.name, (pod,))
            plan = plan_gang(view, gang) if make is None else plan_gang(view, gang, new)
            got_one = None if plan is None else replace(plan.allocations[0], group="")
            assert got_one == want, f"seed {seed} step {step}: {got_one} != {want}"
            compared += 1
        if rng.random() < 0.8:  # else the view is dropped: nothing it reserved may stay in the index
            view.commit()
            running.extend(a.pod for a in view.reserved)
    groups = cluster.states().groups
    assert sorted(i for g in groups.values() for i in g.members) == list(range(len(cluster.nodes)))
    for key, group in groups.items():
        assert all(state_key(cluster.nodes[i]) == key for i in group.members)
    return compared


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("seed", range(5))
def test_index_decides_like_a_full_scan(name: str, seed: int) -> None:
    assert run(seed, POLICIES[name]) > 200


@pytest.mark.parametrize("seed", range(3))
def test_default_live_policy_decides_like_a_full_scan(seed: int) -> None:
    """No policy argument: the cluster's live railnet policy (default refresh period)."""
    assert run(100 + seed, None, steps=400) > 300


def test_a_dropped_view_leaves_the_index_alone() -> None:
    cluster = Cluster([new_node(i, f"n{i}", 64_000, 256_000, "G", 4) for i in range(3)])
    before = {k: set(g.members) for k, g in cluster.states().groups.items()}
    view = ClusterView(cluster)
    assert plan_gang(view, Gang("j", (PodSpec("p", 1000, 10, 2, 1000),)), BestFitPolicy()) is not None
    assert {k: set(g.members) for k, g in cluster.states().groups.items()} == before
    view.commit()
    assert len(cluster.states().groups) == 2
