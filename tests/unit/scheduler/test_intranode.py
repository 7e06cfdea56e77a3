"""Joint GPU + NIC placement: fixed cases on an HGX-like box, and the optimum of a brute force.

The property tests build their own random topologies (tier matrices from a random PCIe layout,
NVLink pairs, or arbitrary matrices) and compare ``plan_devices`` with ``sched_reference``, which
scores candidates from the documented rules and shares no code with ``scheduler/``.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scheduler.device_fragmentation import device_fragmentation
from scheduler.intranode import DeviceRequest, plan_devices
from scheduler.synthetic import hgx_like, hgx_pairs, random_tree_topology
from scheduler.topology import Scope, Tier, intern, mask_of
from tests.unit.scheduler import sched_reference as ref

HGX = hgx_like()


def test_hgx_rails_pair_each_gpu_with_its_own_nic() -> None:
    plan = plan_devices(HGX, 0xFF, 0xFF, DeviceRequest(4, 4))
    assert plan is not None
    assert plan.gpus == (0, 1, 2, 3)
    assert plan.rails == ((0, 0), (1, 1), (2, 2), (3, 3))
    assert plan.rail_tiers == (Tier.SAME_SWITCH,) * 4
    assert plan.gpu_tier == Tier.SAME_NUMA


def test_four_gpus_stay_on_one_socket_when_possible() -> None:
    free = mask_of([1, 2, 3, 4, 5, 6, 7])  # GPU 0 taken: socket 0 has 3 free, socket 1 has 4
    plan = plan_devices(HGX, free, 0xFF, DeviceRequest(4, 4))
    assert plan is not None and plan.gpus == (4, 5, 6, 7)


def test_single_gpu_goes_to_the_fuller_socket() -> None:
    free = mask_of([0, 1, 2, 3, 4, 5])  # socket 0: 4 free, socket 1: 2 free
    plan = plan_devices(HGX, free, mask_of([0, 1, 2, 3, 4, 5]), DeviceRequest(1, 1))
    assert plan is not None and plan.gpus in ((4,), (5,))
    assert plan.nics == plan.gpus  # its own rail


def test_gpu_without_nic_prefers_a_gpu_whose_nic_is_gone() -> None:
    nics = mask_of([0, 1, 2, 3, 4, 6, 7])  # NIC 5 already taken by a NIC-only pod
    plan = plan_devices(HGX, 0xFF, nics, DeviceRequest(1, 0))
    assert plan is not None and plan.gpus == (5,)


def test_required_scope_rejects_and_preferred_scope_prefers() -> None:
    topo = hgx_pairs()  # two GPUs + one NIC per switch
    assert plan_devices(topo, 0xFF, 0xF, DeviceRequest(4, 2, required=Scope.SAME_SWITCH)) is None
    plan = plan_devices(topo, 0xFF, 0xF, DeviceRequest(2, 1, required=Scope.SAME_SWITCH))
    assert plan is not None and plan.gpu_tier == Tier.SAME_SWITCH
    # GPUs 0 and 2 are free but on different switches; the NIC of GPU 0's switch is taken.
    preferred = plan_devices(
        topo, mask_of([0, 2, 3]), mask_of([1]), DeviceRequest(2, 1, preferred=Scope.SAME_SWITCH)
    )
    assert preferred is not None and preferred.gpus == (2, 3) and preferred.in_preferred_scope


def test_not_enough_devices() -> None:
    assert plan_devices(HGX, mask_of([0, 1]), 0xFF, DeviceRequest(3, 0)) is None
    assert plan_devices(HGX, 0xFF, mask_of([0]), DeviceRequest(2, 2)) is None


def test_more_nics_than_gpus_and_nics_only() -> None:
    plan = plan_devices(HGX, 0xFF, 0xFF, DeviceRequest(1, 2))
    assert plan is not None and len(plan.nics) == 2 and all(g == plan.gpus[0] for g, _ in plan.rails)
    only = plan_devices(HGX, 0xFF, 0xFF, DeviceRequest(0, 1))
    assert only is not None and only.gpus == () and len(only.nics) == 1 and only.rails == ()


def test_fragmentation_measure() -> None:
    # 4 + 1 free GPUs are less spread than 3 + 2. By hand: on one socket every pair is SAME_NUMA
    # (3), across sockets CROSS_SOCKET (5): 6*3 + 4*5 = 38 against 3*3 + 1*3 + 6*5 = 42.
    assert device_fragmentation(HGX, mask_of([0, 1, 2, 3, 4]), 0)[1] == 38
    assert device_fragmentation(HGX, mask_of([1, 2, 3, 4, 5]), 0)[1] == 42
    # A free GPU whose NIC is gone is a lost rail.
    assert device_fragmentation(HGX, mask_of([0]), mask_of([0]))[0] == 0
    # GPU 0 and NIC 1 are each other's nearest free partner at SAME_NUMA instead of SAME_SWITCH.
    assert device_fragmentation(HGX, mask_of([0]), mask_of([1]))[0] == 2 * (Tier.SAME_NUMA - Tier.SAME_SWITCH)


def test_nodes_above_eight_gpus_use_the_heuristic() -> None:
    topo = random_tree_topology(random.Random(3), 12, 6)
    plan = plan_devices(topo, topo.all_gpus, topo.all_nics, DeviceRequest(4, 4))
    assert plan is not None and len(plan.gpus) == 4 and len(plan.nics) == 4
    assert {g for g, _ in plan.rails} == set(plan.gpus)




# --- property tests against the brute force --------------------------------------------------------

# The worst tier each scope allows, from docs/scheduler.md (an NVLink pair counts as within a switch).
SCOPE_LIMIT = {"SAME_SWITCH": 1, "SAME_NUMA": 3, "SAME_SOCKET": 4, "ANY": 5}

Topology = tuple[list[list[int]], list[list[int]]]  # (gpu_gpu, gpu_nic)
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]


@st.composite
def pcie_layout(draw: st.DrawFn, n_gpus: int, n_nics: int) -> Topology:
    """Devices at random places of a random machine, tiers by the rules in netmanager's Tier docs."""
    sockets = draw(st.integers(1, 2))
    numa_per_socket = draw(st.integers(1, 2))
    bridges_per_numa = draw(st.integers(1, 2))
    switches_per_bridge = draw(st.integers(0, 3))
    # A place: (socket, NUMA node, host bridge, PCIe switch or -1 for "on the root port").
    places = [
        (s, s * numa_per_socket + m, b, w)
        for s in range(sockets)
        for m in range(numa_per_socket)
        for b in range(bridges_per_numa)
        for w in range(-1, switches_per_bridge)
    ]
    gpus = [draw(st.sampled_from(places)) for _ in range(n_gpus)]
    nics = [draw(st.sampled_from(places)) for _ in range(n_nics)]

    def tier(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
        if a[0] != b[0]:
            return 5  # CROSS_SOCKET
        if a[1] != b[1]:
            return 4  # SAME_SOCKET
        if a[2] != b[2]:
            return 3  # SAME_NUMA
        return 1 if a[3] == b[3] >= 0 else 2  # SAME_SWITCH / SAME_ROOT

    nvlink = draw(st.sampled_from(["none", "some", "all"]))
    gg = [[0 if i == j else tier(gpus[i], gpus[j]) for j in range(n_gpus)] for i in range(n_gpus)]
    for i in range(n_gpus):
        for j in range(i + 1, n_gpus):
            if nvlink == "all" or (nvlink == "some" and draw(st.booleans())):
                gg[i][j] = gg[j][i] = 0
    return gg, [[tier(g, k) for k in nics] for g in gpus]


@st.composite
def any_matrices(draw: st.DrawFn, n_gpus: int, n_nics: int) -> Topology:
    """Symmetric matrices with no tree behind them; few distinct values make many ties."""
    values = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True))
    gg = [[0] * n_gpus for _ in range(n_gpus)]
    for i in range(n_gpus):
        for j in range(i + 1, n_gpus):
            gg[i][j] = gg[j][i] = draw(st.sampled_from(values))
    gn = [[draw(st.sampled_from(values)) for _ in range(n_nics)] for _ in range(n_gpus)]
    return gg, gn


@st.composite
def placement_cases(
    draw: st.DrawFn, gpu_counts: tuple[int, ...], max_nics: int, requests: tuple[int, ...]
) -> tuple[Topology, list[int], list[int], int, int, str, str | None]:
    n_gpus = draw(st.sampled_from(gpu_counts))
    # Hypothesis leans to small integers; half the nodes get the full NIC count instead.
    n_nics = draw(st.one_of(st.just(max_nics), st.integers(0, max_nics)))
    layout = draw(st.sampled_from([pcie_layout, any_matrices]))
    gg, gn = draw(layout(n_gpus, n_nics))
    g = draw(st.sampled_from([r for r in requests if r <= n_gpus]))
    # Mostly enough free GPUs (an occasional shortfall checks the "does not fit" answer too).
    spare = n_gpus - g + draw(st.sampled_from([0, 0, 0, 1]))
    taken = draw(st.sets(st.integers(0, n_gpus - 1), max_size=spare))
    free_gpus = [i for i in range(n_gpus) if i not in taken]
    taken_nics = draw(st.sets(st.integers(0, n_nics - 1), max_size=n_nics // 2)) if n_nics else set()
    free_nics = [k for k in range(n_nics) if k not in taken_nics]
    # One NIC per GPU (the benches' request) is the common case; also none, and any count.
    n = draw(st.sampled_from([min(g, len(free_nics))] * 2 + [0, draw(st.integers(0, len(free_nics)))]))
    required = draw(st.sampled_from(sorted(SCOPE_LIMIT)))
    preferred = draw(st.none() | st.sampled_from(sorted(SCOPE_LIMIT)))
    return (gg, gn), free_gpus, free_nics, g, n, required, preferred


def check_against_brute_force(case: tuple[Topology, list[int], list[int], int, int, str, str | None]) -> None:
    (gg, gn), free_gpus, free_nics, g, n, required, preferred = case
    request = DeviceRequest(g, n, Scope[required], None if preferred is None else Scope[preferred])
    topo = intern(gg, gn)
    plan = plan_devices(topo, mask_of(free_gpus), mask_of(free_nics), request)
    pref = None if preferred is None else SCOPE_LIMIT[preferred]
    optimum = ref.best(gg, gn, free_gpus, free_nics, g, n, SCOPE_LIMIT[required], pref)
    if optimum is None:
        assert plan is None
        return
    assert plan is not None
    # A valid choice: free devices, the requested counts, a balanced pairing within the required scope.
    assert set(plan.gpus) <= set(free_gpus) and len(set(plan.gpus)) == g
    assert set(plan.nics) <= set(free_nics) and len(set(plan.nics)) == n
    assert ref.is_balanced(plan.gpus, plan.nics, plan.rails)
    got = ref.score(gg, gn, free_gpus, free_nics, plan.gpus, plan.nics, plan.rails, pref)
    assert got[1] <= SCOPE_LIMIT[required] and all(t <= SCOPE_LIMIT[required] for t in got[2])
    # Ranked as well as the optimum (ties allowed: another candidate of the same score may win).
    assert got == optimum.score
    # What the plan reports about itself is what the reference computes for it.
    assert (not plan.in_preferred_scope, plan.gpu_tier, plan.rail_tiers, plan.fragmentation) == got


def test_reference_pruning_matches_plain_enumeration() -> None:
    """The brute force's pruning against enumeration of every pairing, on small random nodes."""

    @settings(max_examples=80, deadline=None, database=None, suppress_health_check=_SLOW)
    @given(placement_cases(gpu_counts=(1, 2, 3, 4), max_nics=4, requests=(1, 2, 3, 4)))
    def same(case: tuple[Topology, list[int], list[int], int, int, str, str | None]) -> None:
        (gg, gn), free_gpus, free_nics, g, n, required, preferred = case
        pref = None if preferred is None else SCOPE_LIMIT[preferred]
        pruned = ref.best(gg, gn, free_gpus, free_nics, g, n, SCOPE_LIMIT[required], pref)
        plain = ref.naive_best(gg, gn, free_gpus, free_nics, g, n, SCOPE_LIMIT[required], pref)
        assert (pruned is None) == (plain is None)
        if pruned is not None and plain is not None:
            assert (pruned.score, pruned.gpus, pruned.nics) == (plain.score, plain.gpus, plain.nics)

    same()


def _two_socket_box() -> Topology:
    """HGX-like: GPU i and NIC i under switch i, four per socket (written out, not from synthetic)."""

    def tier(a: int, b: int, same_switch: int) -> int:
        return same_switch if a == b else (3 if a // 4 == b // 4 else 5)

    return [[tier(i, j, 0) for j in range(8)] for i in range(8)], [[tier(i, k, 1) for k in range(8)] for i in range(8)]


BOX = _two_socket_box()


@settings(max_examples=120, deadline=None, suppress_health_check=_SLOW)
@given(placement_cases(gpu_counts=(8,), max_nics=8, requests=(1, 2, 4, 8)))
@example((BOX, list(range(8)), list(range(8)), 8, 8, "ANY", "SAME_SWITCH"))
@example((BOX, [1, 2, 3, 4, 5, 6, 7], list(range(8)), 4, 4, "SAME_SOCKET", None))
@example((BOX, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 6, 7], 2, 2, "ANY", "SAME_NUMA"))
@example((BOX, list(range(8)), [0, 2, 4, 6], 4, 8, "ANY", None))  # more NICs asked than free: None
def test_eight_gpu_nodes_match_brute_force(case: tuple[Topology, list[int], list[int], int, int, str, str | None]) -> None:
    """The bench shape: 8 GPUs, up to 8 NICs, requests of 1, 2, 4 and 8 GPUs."""
    check_against_brute_force(case)


@settings(max_examples=100, deadline=None, suppress_health_check=_SLOW)
@given(placement_cases(gpu_counts=(1, 2, 3, 4, 5, 6, 7, 8), max_nics=8, requests=(1, 2, 4, 8)))
def test_any_node_up_to_eight_gpus_matches_brute_force(
    case: tuple[Topology, list[int], list[int], int, int, str, str | None],
) -> None:
    check_against_brute_force(case)
