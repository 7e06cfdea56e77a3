"""Gang placement: all-or-nothing, narrowest domain, rank locality, and no deadlock between gangs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.gang import Gang, plan_gang
from scheduler.model import Cluster, PodSpec, new_node
from scheduler.queue import GangQueue
from scheduler.synthetic import fabric_cluster, hgx_like
from scheduler.topology import Scope
from scheduler.view import ClusterView


def workers(
    prefix: str, count: int, gpus: int, nics: int | None = None, cpu: int = 1000
) -> tuple[PodSpec, ...]:
    return tuple(
        PodSpec(
            f"{prefix}-{r}",
            cpu_milli=cpu,
            num_gpu=gpus,
            gpu_milli=1000 if gpus else 0,
            rdma_nics=gpus if nics is None else nics,
        )
        for r in range(count)
    )


def test_gang_fills_one_leaf_and_keeps_ranks_in_order() -> None:
    cluster = fabric_cluster(16, nodes_per_leaf=4, leaves_per_spine=2, spines_per_zone=2)
    view = ClusterView(cluster)
    plan = plan_gang(view, Gang("job", workers("w", 4, 8)))
    assert plan is not None and plan.level == 0
    assert [a.node for a in plan.allocations] == [0, 1, 2, 3]
    assert all(a.rails == tuple((i, i) for i in range(8)) for a in plan.allocations)
    assert cluster.allocations == {}  # nothing applied until commit
    view.commit()
    assert len(cluster.allocations) == 4


def test_gang_takes_the_tightest_leaf_that_fits() -> None:
    cluster = fabric_cluster(8, nodes_per_leaf=4, leaves_per_spine=2)
    # leaf 0 has one node busy: 3 free nodes; leaf 1 is empty: 4 free nodes
    cluster.apply(plan_alloc(cluster, PodSpec("busy", num_gpu=8, gpu_milli=1000), node=0))
    plan = plan_gang(ClusterView(cluster), Gang("job", workers("w", 3, 8)))
    assert plan is not None and {a.node for a in plan.allocations} == {1, 2, 3}


def test_gang_spills_to_spine_with_consecutive_ranks_per_leaf() -> None:
    cluster = fabric_cluster(16, nodes_per_leaf=4, leaves_per_spine=4, spines_per_zone=1)
    plan = plan_gang(ClusterView(cluster), Gang("job", workers("w", 6, 8)))
    assert plan is not None and plan.level == 1
    leaves = [cluster.domains.domain_of(a.node, 0) for a in plan.allocations]
    assert leaves == sorted(leaves)  # ranks walk leaves in order, never back
    assert len(set(leaves)) == 2


def test_small_pods_pack_onto_few_nodes() -> None:
    cluster = fabric_cluster(8, nodes_per_leaf=8)
    plan = plan_gang(ClusterView(cluster), Gang("job", workers("w", 10, 2)))
    assert plan is not None
    assert len({a.node for a in plan.allocations}) == 3  # 4 + 4 + 2


def test_all_or_nothing_and_min_member() -> None:
    cluster = fabric_cluster(2, nodes_per_leaf=2)
    view = ClusterView(cluster)
    assert plan_gang(view, Gang("too-big", workers("w", 3, 8))) is None
    assert list(view.touched()) == []
    elastic = plan_gang(view, Gang("elastic", workers("e", 3, 8), min_member=2))
    assert elastic is not None and len(elastic.allocations) == 2


def test_required_scope_and_max_level() -> None:
    cluster = fabric_cluster(4, nodes_per_leaf=2, leaves_per_spine=2)
    pods = tuple(
        PodSpec(f"s-{r}", num_gpu=2, gpu_milli=1000, rdma_nics=2, required_scope=Scope.SAME_SWITCH)
        for r in range(2)
    )
    assert plan_gang(ClusterView(cluster), Gang("switch", pods)) is None  # HGX has one GPU per switch
    assert plan_gang(ClusterView(cluster), Gang("leaf-only", workers("w", 3, 8), max_level=0)) is None
    assert plan_gang(ClusterView(cluster), Gang("spine", workers("w", 3, 8), max_level=1)) is not None


def test_heterogeneous_gang_places_launcher_next_to_workers() -> None:
    cluster = fabric_cluster(4, nodes_per_leaf=2)
    members = (PodSpec("launcher", cpu_milli=2000),) + workers("w", 3, 4)
    plan = plan_gang(ClusterView(cluster), Gang("mixed", members))
    assert plan is not None and len(plan.allocations) == 4
    assert plan.level == 0
    assert plan.allocations[0].pod == "launcher"


def plan_alloc(cluster: Cluster, pod: PodSpec, node: int):  # type: ignore[no-untyped-def]
    from scheduler.placement import place_on_node

    alloc = place_on_node(cluster.nodes[node], pod)
    assert alloc is not None
    return alloc


# -- competing gangs ------------------------------------------------------------------------------


def small_cluster(nodes: int, gpus: int) -> Cluster:
    topo = hgx_like() if gpus == 8 else None
    return Cluster(new_node(i, f"n{i}", 64_000, 256_000, "A100", gpus, topo) for i in range(nodes))


def naive_reserve_on_arrival(
    nodes: int, gpus: int, events: list[tuple[str, int]], gangs: dict[str, list[int]]
) -> bool:
    """Permit-style scheduler: each arriving pod reserves GPUs at once and waits for its siblings.
    Returns True when it ends deadlocked (every gang incomplete, some capacity held)."""
    free = [gpus] * nodes
    held: dict[str, int] = {name: 0 for name in gangs}
    for gang, rank in events:
        need = gangs[gang][rank]
        for i in range(nodes):
            if free[i] >= need:
                free[i] -= need
                held[gang] += 1
                break
    complete = any(held[g] == len(gangs[g]) for g in gangs)
    return not complete and any(held.values())


@st.composite
def competing_gangs(draw: st.DrawFn) -> tuple[int, int, dict[str, list[int]], list[tuple[str, int]]]:
    nodes = draw(st.integers(1, 3))
    gpus = draw(st.sampled_from([4, 8]))
    gangs: dict[str, list[int]] = {}
    for name in ("a", "b"):
        size = draw(st.integers(1, 2 * nodes))
        gangs[name] = [draw(st.integers(1, gpus)) for _ in range(size)]
    events = [(g, r) for g, sizes in gangs.items() for r in range(len(sizes))]
    return nodes, gpus, gangs, draw(st.permutations(events))


def fits_alone(nodes: int, gpus: int, sizes: list[int]) -> bool:
    cluster = small_cluster(nodes, gpus)
    gang = Gang("probe", tuple(PodSpec(f"p{r}", num_gpu=s, gpu_milli=1000) for r, s in enumerate(sizes)))
    return plan_gang(ClusterView(cluster), gang) is not None


def declare_whole_gpu_gangs(queue: GangQueue, gangs: dict[str, list[int]]) -> None:
    """Each gang's member r asks for sizes[r] whole GPUs."""
    for name, sizes in gangs.items():
        queue.declare(
            Gang(name, tuple(PodSpec(f"{name}-{r}", num_gpu=s, gpu_milli=1000) for r, s in enumerate(sizes)))
        )


@settings(max_examples=150, deadline=None)
@given(competing_gangs())
def test_interleaved_gangs_never_deadlock(
    case: tuple[int, int, dict[str, list[int]], list[tuple[str, int]]],
) -> None:
    """scheduler-plugins#117: two gangs arrive interleaved and compete for the same GPUs."""
    nodes, gpus, gangs, events = case
    cluster = small_cluster(nodes, gpus)
    queue = GangQueue(cluster)
    declare_whole_gpu_gangs(queue, gangs)
    for gang, rank in events:
        queue.arrive(gang, f"{gang}-{rank}")
        queue.cycle()
        for name, sizes in gangs.items():
            assert queue.holding(name) in (0, len(sizes)), "a partial gang holds capacity"
        # GPUs in use on the nodes are exactly those of the gangs placed so far (nothing leaked).
        in_use = sum(n.gpu_count - n.whole_free.bit_count() for n in cluster.nodes)
        assert in_use == sum(sum(gangs[name]) for name in queue.placed)
    feasible = [name for name, sizes in gangs.items() if fits_alone(nodes, gpus, sizes)]
    if feasible:
        assert any(name in queue.placed for name in feasible), "no gang completed although one fits alone"


def test_the_117_interleaving_deadlocks_a_naive_scheduler_but_not_the_queue() -> None:
    gangs = {"a": [6, 6], "b": [6, 6]}
    events = [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert naive_reserve_on_arrival(2, 8, events, gangs)
    cluster = small_cluster(2, 8)
    queue = GangQueue(cluster)
    declare_whole_gpu_gangs(queue, gangs)
    for gang, rank in events:
        queue.arrive(gang, f"{gang}-{rank}")
        queue.cycle()
    assert list(queue.placed) == ["a"] and queue.holding("b") == 0


@settings(max_examples=60, deadline=None)
@given(st.permutations(["a", "b", "c", "d"]), st.integers(1, 3))
def test_gang_groups_never_half_start(order: list[str], nodes: int) -> None:
    """koordinator#872: groups {a, b} and {c, d}; each group fits alone, both groups do not."""
    cluster = small_cluster(nodes * 2, 8)
    queue = GangQueue(cluster)
    for name in "abcd":
        group = "ab" if name in "ab" else "cd"
        queue.declare(Gang(name, workers(name, nodes, 8, nics=0)), group=group)
    for name in order:
        for r in range(nodes):
            queue.arrive(name, f"{name}-{r}")
        queue.cycle()
        placed = set(queue.placed)
        assert placed in (set(), {"a", "b"}, {"c", "d"})
        assert all(queue.holding(g) in (0, nodes) for g in "abcd")
    assert set(queue.placed) in ({"a", "b"}, {"c", "d"})
