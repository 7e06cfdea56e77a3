"""Trace loading, the FGD methodology, policies and the simulate CLI on small synthetic traces."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from scheduler.devices import FirstFitAllocator, GpuAllocatorBaseline, JointAllocator, besteffort
from scheduler.fragmentation import FragmentationModel, Shape, typical_shapes
from scheduler.intranode import DeviceRequest
from scheduler.model import PodSpec, new_node
from scheduler.policies import BestFitPolicy, FgdPolicy, RailnetPolicy, make_policy, state_key
from scheduler.progress import ProgressBar
from scheduler.replay import ReplayEngine, ReplayResult, TopologyStats, arrival_order, build_nodes, replay
from scheduler.simulate import main
from scheduler.synthetic import Slot, from_slots, hgx_like
from scheduler.trace import NodeRow, TraceError, load_nodes, load_pods

NODES_CSV = """sn,cpu_milli,memory_mib,gpu,model
n0,96000,393216,8,G2
n1,96000,393216,8,G2
n2,32000,131072,2,T4
n3,32000,131072,0,
"""

PODS_CSV = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec
p0,8000,1024,1,1000,
p1,4000,1024,1,500,
p2,4000,1024,1,500,G2
p3,12000,1024,0,0,
p4,8000,1024,2,1000,
p5,2000,1024,1,250,T4|G2
p6,16000,1024,4,1000,
p7,6000,1024,1,810,
"""


@pytest.fixture()
def trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    pods = tmp_path / "pods.csv"
    nodes.write_text(NODES_CSV)
    pods.write_text(PODS_CSV)
    return nodes, pods


def test_load_trace(trace: tuple[Path, Path]) -> None:
    nodes = load_nodes(trace[0])
    pods = load_pods(trace[1])
    assert nodes[2] == NodeRow("n2", 32000, 131072, 2, "T4") and nodes[3].model == ""
    assert pods[1].shares_gpu and pods[2].gpu_models == frozenset({"G2"})
    assert pods[5].gpu_models == frozenset({"T4", "G2"}) and pods[3].num_gpu == 0


def test_trace_errors_name_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,abc,1,0,0\n")
    with pytest.raises(TraceError, match=r"bad.csv:2: column cpu_milli is not a number"):
        load_pods(bad)
    bad.write_text("name,cpu_milli\np0,1\n")
    with pytest.raises(TraceError, match="missing columns memory_mib, num_gpu, gpu_milli"):
        load_pods(bad)
    bad.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,2,500\n")
    with pytest.raises(TraceError, match="needs num_gpu == 1"):
        load_pods(bad)
    with pytest.raises(TraceError, match="cannot open"):
        load_nodes(tmp_path / "missing.csv")


def test_arrival_order_shuffles_and_tunes_to_the_ratio(trace: tuple[Path, Path]) -> None:
    pods = load_pods(trace[1])
    capacity = 18_000
    order = arrival_order(pods, capacity, random.Random(42))
    assert order == arrival_order(pods, capacity, random.Random(42))
    assert [p.name for p in order] != [p.name for p in arrival_order(pods, capacity, random.Random(43))]
    total = sum(p.total_gpu_milli for p in order)
    assert 1.3 * capacity - 1000 <= total <= 1.3 * capacity + 7000  # the simulator's per-GPU check
    assert all(p.name in {q.name for q in pods} or "-tuned-" in p.name for p in order)
    down = arrival_order(pods, 4_000, random.Random(1))
    assert sum(p.total_gpu_milli for p in down) <= 1.3 * 4_000


def test_allocation_at_uses_the_fgd_merge_rule() -> None:
    samples = [(500, 500), (995, 900), (1004, 950), (1010, 960), (1300, 970)]
    result = ReplayResult("x", 42, 5, 0, 1000, samples, TopologyStats(), 0.0)
    assert result.allocation_at(100) == pytest.approx((90 + 95) / 2)  # arrived rounds to 100: two samples
    assert result.allocation_at(130) == pytest.approx(97.0)
    assert result.allocation_at_crossing(100) == pytest.approx(95.0)
    assert result.allocation_at(50) == pytest.approx(50.0)


def test_fgd_fragmentation_by_hand() -> None:
    shapes = [
        (Shape(1000, 500, 1, frozenset()), 0.5),
        (Shape(1000, 1000, 1, frozenset()), 0.25),
        (Shape(1000, 0, 0, frozenset()), 0.25),
    ]
    model = FragmentationModel(shapes)
    # GPUs with 300 and 1000 free: half-GPU shape cannot use 300; whole shape cannot use 300;
    # CPU-only shape leaves all 1300 idle.
    assert model.node_fragmentation("G", 8000, 0, (300, 1000)) == pytest.approx(
        0.5 * 300 + 0.25 * 300 + 0.25 * 1300
    )
    assert model.node_fragmentation("G", 500, 0, (300, 1000)) == pytest.approx(1300)  # no CPU: nothing fits
    typical = typical_shapes([PodSpec("a", 1, num_gpu=1, gpu_milli=1000)] * 3 + [PodSpec("b", 2)])
    assert [round(p, 2) for _, p in typical] == [0.75, 0.25]


def small_nodes() -> list:  # type: ignore[type-arg]
    return [new_node(i, f"n{i}", 32_000, 64_000, "G2", 4) for i in range(3)]


def test_engine_state_classes_stay_consistent() -> None:
    pods = [PodSpec(f"p{i}", 2000 * (i % 3), 100, 1, [1000, 500, 250][i % 3]) for i in range(20)]
    engine = ReplayEngine(small_nodes(), make_policy("fgd", pods), random.Random(0), rank=[2, 0, 1])
    for pod in pods:
        engine.place(pod)
        members = sorted(i for group in engine._classes.values() for i in group.members)
        assert members == [0, 1, 2]
        for index, key in enumerate(engine._key_of):
            assert key == state_key(engine.cluster.nodes[index])
    assert engine.cluster.gpu_allocated_milli <= engine.cluster.gpu_capacity_milli


def test_ties_go_to_the_first_node_in_rank_order() -> None:
    engine = ReplayEngine(small_nodes(), BestFitPolicy(), random.Random(0), rank=[2, 0, 1])
    alloc = engine.place(PodSpec("p", 1000, 10, 1, 1000))
    assert alloc is not None and alloc.node == 1


def test_fgd_packs_shares_into_partly_used_gpus() -> None:
    shapes = [(Shape(1000, 500, 1, frozenset()), 0.5), (Shape(1000, 1000, 1, frozenset()), 0.5)]
    policy = FgdPolicy(FragmentationModel(shapes))
    node = new_node(0, "n", 32_000, 64_000, "G2", 2)
    node.gpu_free_milli = [500, 1000]
    node.whole_free = 0b10
    score, hint = policy.evaluate(node, PodSpec("s", 1000, 10, 1, 500))  # type: ignore[misc]
    assert hint == frozenset({500})  # the half-used GPU, leaving a whole one


def test_railnet_avoids_stranding_gpus_without_cpu() -> None:
    pods = [PodSpec(f"g{i}", 8000, 100, 1, 1000) for i in range(8)]
    policy = RailnetPolicy()
    for pod in pods:  # the policy learns its workload (8 CPU cores per GPU) from arrived pods
        policy.observe(pod)
    assert policy.cpu_per_gpu == 8000.0
    fgd = FgdPolicy(FragmentationModel(typical_shapes(pods)))
    lean = new_node(0, "lean", 32_000, 64_000, "G2", 4)  # CPU for exactly its 4 GPUs
    rich = new_node(1, "rich", 32_000, 64_000, "G2", 0)  # no GPUs
    hog = PodSpec("cpu-hog", 16_000, 100)
    lean_score = policy.evaluate(lean, hog)
    rich_score = policy.evaluate(rich, hog)
    assert lean_score is not None and rich_score is not None and rich_score[0] > lean_score[0]
    assert fgd.evaluate(lean, hog) is not None


def test_policies_place_whole_gpus_with_rails_on_hgx() -> None:
    pods = [PodSpec("w", 1000, 10, 4, 1000)]
    node = new_node(0, "hgx", 128_000, 1 << 20, "H100", 8, hgx_like())
    alloc = make_policy("railnet", pods).allocate(node, pods[0], None, random.Random(0))
    assert (
        alloc is not None and alloc.gpus == (0, 1, 2, 3) and alloc.rails == ((0, 0), (1, 1), (2, 2), (3, 3))
    )
    baseline = make_policy("bestfit", pods).allocate(node, pods[0], None, random.Random(0))
    assert baseline is not None and baseline.nics == ()
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", pods)


def test_go_gpuallocator_besteffort_prefers_the_best_partition() -> None:
    # NVLink pairs (0,3) (1,2): the best 2-GPU set is an NVLink pair, chosen via the partition.
    slots = [Slot(0, 0, 0, None)] * 4
    topo = from_slots(slots, [], {(0, 3), (1, 2)})
    assert besteffort(topo, 0b1111, 2) in ((0, 3), (1, 2))
    assert besteffort(topo, 0b1111, 1) == (0,)  # one GPU: the first one
    assert besteffort(topo, 0b0011, 3) is None
    hgx = hgx_like()
    choice = GpuAllocatorBaseline().choose(hgx, 0xFF, 0xFF, DeviceRequest(4, 4))
    assert choice is not None and len(choice.gpus) == 4 and len(choice.nics) == 4
    first = FirstFitAllocator().choose(hgx, 0b1111_0110, 0xFF, DeviceRequest(2, 2))
    assert first is not None and first.gpus == (1, 2) and first.rails == ((1, 1), (2, 2))
    joint = JointAllocator().choose(hgx, 0xFF, 0xFF, DeviceRequest(2, 2))
    assert joint is not None and joint.rails == ((0, 0), (1, 1))


def test_replay_end_to_end(trace: tuple[Path, Path]) -> None:
    rows = load_nodes(trace[0])
    pods = load_pods(trace[1])
    for name in ("railnet", "fgd", "bestfit", "random"):
        result = replay(rows, pods, make_policy(name, pods), 42)
        assert result.pods == len(result.samples)
        assert result.allocation_at(130) is not None
        assert all(b <= result.capacity_milli for _, b in result.samples)
    nodes = build_nodes(rows, "hgx")
    assert nodes[0].nic_count == 8 and nodes[2].nic_count == 0
    with pytest.raises(ValueError, match="unknown topology"):
        build_nodes(rows, "dgx")


def test_simulate_cli(trace: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = (str(p) for p in trace)
    assert main(["--nodes", nodes, "--pods", pods, "--seeds", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["seeds"] == [42, 43] and doc["policy"] == "railnet"
    for key in ("allocated_pct_at_100", "allocated_pct_at_130", "topology"):
        assert key in doc
    assert set(doc["topology"]) >= {"best_tier_pct", "same_switch_nic_pct"}
    assert main(["--nodes", nodes, "--pods", pods, "--seeds", "1", "--policy", "bestfit"]) == 0
    assert "allocated % at 130 % arrived" in capsys.readouterr().out
    assert main(["--nodes", nodes + ".missing", "--pods", pods]) == 2
    assert "cannot open" in capsys.readouterr().err
    assert main(["--nodes", nodes, "--pods", pods, "--seeds", "0"]) == 2


def test_progress_bar_writes_one_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(2, stream=stream, force=True)
    bar.update(5, 10, "seed 42")
    bar.step_done()
    bar.update(10, 10)
    bar.close()
    text = stream.getvalue()
    assert "\r[" in text and "100.0%" in text and text.endswith("\n")
    quiet = io.StringIO()
    ProgressBar(1, stream=quiet).update(1, 1)
    assert quiet.getvalue() == ""
