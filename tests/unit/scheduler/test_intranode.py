"""Joint GPU + NIC placement: fixed cases on an HGX-like box and equality with brute force."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.scheduler.sched_reference import brute_force_plan

from scheduler.device_fragmentation import device_fragmentation
from scheduler.intranode import DeviceRequest, plan_devices
from scheduler.synthetic import hgx_like, hgx_pairs, random_matrix_topology, random_tree_topology
from scheduler.topology import CompactTopology, Scope, Tier, mask_of

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
    # 4 + 1 free GPUs are less spread than 3 + 2 (see the module docstring).
    assert (
        device_fragmentation(HGX, mask_of([0, 1, 2, 3, 4]), 0)[1]
        < device_fragmentation(HGX, mask_of([1, 2, 3, 4, 5]), 0)[1]
    )
    # A free GPU whose NIC is gone is a lost rail.
    assert device_fragmentation(HGX, mask_of([0]), mask_of([0]))[0] == 0
    assert device_fragmentation(HGX, mask_of([0]), mask_of([1]))[0] > 0


def test_nodes_above_eight_gpus_use_the_heuristic() -> None:
    topo = random_tree_topology(random.Random(3), 12, 6)
    plan = plan_devices(topo, topo.all_gpus, topo.all_nics, DeviceRequest(4, 4))
    assert plan is not None and len(plan.gpus) == 4 and len(plan.nics) == 4
    assert {g for g, _ in plan.rails} == set(plan.gpus)


@st.composite
def cases(draw: st.DrawFn) -> tuple[CompactTopology, int, int, int, int, int, int | None]:
    kind = draw(st.sampled_from(["tree", "matrix", "hgx", "pairs"]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    if kind == "hgx":
        topo = HGX
    elif kind == "pairs":
        topo = hgx_pairs()
    else:
        n_gpus = draw(st.integers(1, 6))
        n_nics = draw(st.integers(0, 4))
        make = random_tree_topology if kind == "tree" else random_matrix_topology
        topo = make(rng, n_gpus, n_nics)
    free_gpus = draw(st.integers(0, topo.all_gpus))
    free_nics = draw(st.integers(0, topo.all_nics))
    big = topo.n_gpus > 6
    g = draw(st.integers(0, min(3, topo.n_gpus)))
    n = draw(st.integers(0, min(2 if big else 3, topo.n_nics)))
    required = draw(st.sampled_from(list(Scope)))
    preferred = draw(st.none() | st.sampled_from(list(Scope)))
    return topo, free_gpus, free_nics, g, n, int(required), None if preferred is None else int(preferred)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_equals_brute_force(case: tuple[CompactTopology, int, int, int, int, int, int | None]) -> None:
    topo, free_gpus, free_nics, g, n, required, preferred = case
    request = DeviceRequest(g, n, Scope(required), None if preferred is None else Scope(preferred))
    fast = plan_devices(topo, free_gpus, free_nics, request)
    slow = brute_force_plan(topo, free_gpus, free_nics, g, n, required, preferred)
    if slow is None:
        assert fast is None
        return
    assert fast is not None
    got = {name: getattr(fast, name) for name in slow}
    assert got == slow


def test_tier_values_match_the_agent_model() -> None:
    agent = pytest.importorskip("netmanager.topology.model")
    assert {t.name: int(t) for t in agent.Tier} == {t.name: int(t) for t in Tier}
