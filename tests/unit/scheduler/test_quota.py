"""Hierarchical elastic quota: validation, borrowing by weight, gang-aware reclaim, guarantees."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.model import PodSpec
from scheduler.quota import (
    ROOT,
    QuotaError,
    QuotaJob,
    QuotaSpec,
    QuotaTree,
    Verdict,
    job_demand,
    water_fill,
)

GPU = "nvidia.com/gpu.A100"


def run(tree: QuotaTree, job: QuotaJob) -> Verdict:
    """Submit and, when the decision allows, start (after evicting the victims)."""
    tree.submit(job)
    decision = tree.decide(job.name)
    if decision.verdict is Verdict.RECLAIM:
        for victim in decision.victims:
            tree.evict(victim)
    if decision.verdict in (Verdict.ADMIT, Verdict.RECLAIM):
        tree.start(job.name)
    return decision.verdict


def test_children_min_above_parent_min_is_rejected_with_names() -> None:
    specs = [
        QuotaSpec(name="org", min={GPU: 8}),
        QuotaSpec(name="team-a", parent="org", min={GPU: 6}),
        QuotaSpec(name="team-b", parent="org", min={GPU: 4}),
    ]
    with pytest.raises(QuotaError, match=r"quota org: children's min for nvidia.com/gpu.A100 sum to 10"):
        QuotaTree(specs, {GPU: 16})
    with pytest.raises(QuotaError, match="cluster capacity"):
        QuotaTree([QuotaSpec(name="big", min={GPU: 20})], {GPU: 16})
    with pytest.raises(QuotaError, match="parent nope does not exist"):
        QuotaTree([QuotaSpec(name="x", parent="nope")], {GPU: 1})
    with pytest.raises(QuotaError, match="above its max"):
        QuotaTree([QuotaSpec(name="x", min={GPU: 4}, max={GPU: 2})], {GPU: 8})


def test_water_fill_is_weighted_capped_and_exact() -> None:
    assert water_fill(10, [10, 10], [1, 1]) == [5, 5]
    assert water_fill(10, [2, 10], [1, 1]) == [2, 8]  # the capped share is re-split
    assert water_fill(7, [10, 10, 10], [1, 1, 1]) in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
    assert sum(water_fill(45, [30, 30, 30], [60, 50, 80])) == 45
    assert water_fill(5, [3, 3], [1, 0]) == [3, 0]


def test_idle_min_is_lent_and_taken_back() -> None:
    tree = QuotaTree([QuotaSpec(name="a", min={GPU: 8}), QuotaSpec(name="b", min={GPU: 8})], {GPU: 16})
    for i in range(3):
        assert (
            run(tree, QuotaJob(f"b{i}", "b", {GPU: 4}, priority=i)) is Verdict.ADMIT
        )  # b borrows 4 of a's 8
    assert tree.used("b", GPU) == 12
    # a asks its guarantee back: the lowest-priority job of b is evicted, whole.
    assert run(tree, QuotaJob("a0", "a", {GPU: 8})) is Verdict.RECLAIM
    assert "b0" in tree.pending and tree.used("a", GPU) == 8 and tree.used("b", GPU) == 8


def test_borrowing_is_split_by_weight() -> None:
    specs = [
        QuotaSpec(name="idle", min={GPU: 6}),
        QuotaSpec(name="x", min={GPU: 1}, weight={GPU: 1}),
        QuotaSpec(name="y", min={GPU: 1}, weight={GPU: 2}),
    ]
    tree = QuotaTree(specs, {GPU: 8})
    for name in ("x", "y"):
        tree.submit(QuotaJob(f"{name}-demand", name, {GPU: 8}))
    runtime = tree.runtime()
    # 6 idle GPUs are lent 1:2 on top of each min.
    assert runtime["x"][GPU] == 1 + 2 and runtime["y"][GPU] == 1 + 4


def test_allow_lent_false_keeps_min_reserved() -> None:
    tree = QuotaTree(
        [QuotaSpec(name="a", min={GPU: 4}, allow_lent=False), QuotaSpec(name="b", min={GPU: 0})], {GPU: 8}
    )
    assert run(tree, QuotaJob("b0", "b", {GPU: 4})) is Verdict.ADMIT
    assert run(tree, QuotaJob("b1", "b", {GPU: 1})) is Verdict.WAIT


def test_max_is_a_ceiling() -> None:
    tree = QuotaTree([QuotaSpec(name="a", max={GPU: 4})], {GPU: 8})
    assert run(tree, QuotaJob("big", "a", {GPU: 5})) is Verdict.REJECT
    assert run(tree, QuotaJob("a0", "a", {GPU: 3})) is Verdict.ADMIT
    assert run(tree, QuotaJob("a1", "a", {GPU: 2})) is Verdict.WAIT


def test_victims_are_the_fewest_lowest_priority_jobs() -> None:
    tree = QuotaTree([QuotaSpec(name="a", min={GPU: 8}), QuotaSpec(name="b")], {GPU: 8})
    run(tree, QuotaJob("small-1", "b", {GPU: 2}, priority=0))
    run(tree, QuotaJob("small-2", "b", {GPU: 2}, priority=0))
    run(tree, QuotaJob("gang", "b", {GPU: 4}, priority=0, members=4, min_member=4))
    decision_job = QuotaJob("a0", "a", {GPU: 4})
    tree.submit(decision_job)
    decision = tree.decide("a0")
    assert decision.verdict is Verdict.RECLAIM and decision.victims == ("gang",)  # one job, not two


def test_job_demand_counts_gpus_per_model() -> None:
    pods = [
        PodSpec("w0", cpu_milli=1000, num_gpu=8, gpu_milli=1000, rdma_nics=8),
        PodSpec("s", num_gpu=1, gpu_milli=500),
    ]
    assert job_demand(pods, "A100") == {"cpu": 1000, GPU: 9, "rdma": 8}


# -- property tests ---------------------------------------------------------------------------------

RESOURCES = (GPU, "cpu")


@st.composite
def quota_trees(draw: st.DrawFn) -> tuple[list[QuotaSpec], dict[str, int]]:
    capacity = {r: draw(st.integers(4, 24)) for r in RESOURCES}
    specs: list[QuotaSpec] = []

    def build(parent: str | None, budget: dict[str, int], depth: int) -> None:
        count = draw(st.integers(1 if depth == 0 else 0, 3 if depth < 2 else 0))
        left = dict(budget)
        for i in range(count):
            name = f"{parent or 'q'}.{i}"
            low = {r: draw(st.integers(0, left[r])) for r in RESOURCES}
            for r in RESOURCES:
                left[r] -= low[r]
            high = {r: low[r] + draw(st.integers(0, 12)) for r in RESOURCES if draw(st.booleans())}
            specs.append(
                QuotaSpec(name=name, parent=parent, min=low, max=high, allow_lent=draw(st.booleans()))
            )
            build(name, low, depth + 1)

    build(None, capacity, 0)
    return specs, capacity


jobs = st.lists(
    st.tuples(st.integers(0, 20), st.integers(0, 6), st.integers(0, 6), st.integers(0, 3), st.booleans()),
    min_size=1,
    max_size=25,
)


def leaves(tree: QuotaTree) -> list[str]:
    return sorted(n for n in tree.quotas if n != ROOT and tree.is_leaf(n))


def check_invariants(tree: QuotaTree) -> None:
    for name in tree.quotas:
        for resource in tree.resources:
            used = tree.used(name, resource)
            limit = tree.capacity.get(resource, 0) if name == ROOT else tree.max_of(name, resource)
            assert used >= 0
            if limit is not None:
                assert used <= limit, f"{name} uses {used} {resource} > {limit}"


@settings(max_examples=120, deadline=None)
@given(quota_trees(), jobs)
def test_usage_never_exceeds_capacity_or_max(
    tree_case: tuple[list[QuotaSpec], dict[str, int]], ops: list
) -> None:  # type: ignore[type-arg]
    specs, capacity = tree_case
    tree = QuotaTree(specs, capacity)
    names = leaves(tree)
    for n, (leaf, gpus, cpus, prio, finish) in enumerate(ops):
        if finish and tree.running:
            tree.finish(sorted(tree.running)[leaf % len(tree.running)])
        else:
            run(tree, QuotaJob(f"j{n}", names[leaf % len(names)], {GPU: gpus, "cpu": cpus}, priority=prio))
        check_invariants(tree)


@settings(max_examples=150, deadline=None)
@given(
    quota_trees(),
    st.lists(
        st.tuples(st.integers(0, 20), st.integers(1, 4), st.integers(0, 4), st.integers(0, 3)), max_size=24
    ),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), max_size=6),
)
def test_demand_within_min_always_gets_min_back(
    tree_case: tuple[list[QuotaSpec], dict[str, int]],
    borrowers: list[tuple[int, int, int, int]],
    asks: list[tuple[float, float]],
) -> None:
    specs, capacity = tree_case
    tree = QuotaTree(specs, capacity)
    names = leaves(tree)
    lender = max(names, key=lambda n: (tree.quotas[n].spec.min.get(GPU, 0), n))  # the biggest guarantee
    others = [n for n in names if n != lender] or names
    for n, (leaf, gpus, cpus, prio) in enumerate(borrowers):  # others fill the cluster first
        quota = others[leaf % len(others)]
        if quota != lender:
            run(tree, QuotaJob(f"b{n}", quota, {GPU: gpus, "cpu": cpus}, priority=prio))
    low = tree.quotas[lender].spec.min
    asked = {r: 0 for r in RESOURCES}
    for n, (gpu_part, cpu_part) in enumerate(asks):
        request = {GPU: round(gpu_part * low.get(GPU, 0)), "cpu": round(cpu_part * low.get("cpu", 0))}
        if any(asked[r] + request[r] > low.get(r, 0) for r in RESOURCES):
            continue  # only demand within the guarantee is promised
        verdict = run(tree, QuotaJob(f"l{n}", lender, request, priority=-1))
        assert verdict in (Verdict.ADMIT, Verdict.RECLAIM), f"{lender} denied {request} within min {low}"
        for r in RESOURCES:
            asked[r] += request[r]
        check_invariants(tree)
    assert all(tree.used(lender, r) == asked[r] for r in RESOURCES)


def test_nested_lender_reclaims_across_levels() -> None:
    specs = [
        QuotaSpec(name="org-1", min={GPU: 8}),
        QuotaSpec(name="team-a", parent="org-1", min={GPU: 6}),
        QuotaSpec(name="team-b", parent="org-1", min={GPU: 2}),
        QuotaSpec(name="org-2", min={GPU: 8}),
    ]
    tree = QuotaTree(specs, {GPU: 16})
    for i in range(3):
        assert run(tree, QuotaJob(f"o2-{i}", "org-2", {GPU: 2})) is Verdict.ADMIT
    for i in range(6):  # team-b borrows team-a's idle 6 and org-2's idle 2, then hits capacity
        run(tree, QuotaJob(f"tb{i}", "team-b", {GPU: 2}, priority=i))
    assert tree.used("team-b", GPU) == 10 and tree.used(ROOT, GPU) == 16
    # team-a wants its 6 back: only team-b's jobs may go (org-2 is within its min), lowest priority first.
    assert run(tree, QuotaJob("ta", "team-a", {GPU: 6})) is Verdict.RECLAIM
    assert tree.used("team-a", GPU) == 6 and tree.used("team-b", GPU) == 4 and tree.used("org-2", GPU) == 6
    assert {"tb0", "tb1", "tb2"} <= set(tree.pending)
    check_invariants(tree)
