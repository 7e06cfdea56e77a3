"""Synthetic node topologies: an HGX-like box for benchmarks and random ones for property tests.

Tiers come from a PCIe tree: socket > NUMA node > root port > PCIe switch > device. Two devices
are SAME_SWITCH under one switch, SAME_ROOT under one root port, and so on up to CROSS_SOCKET.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from scheduler.domains import DEFAULT_DOMAIN_KEYS
from scheduler.model import Cluster, new_node
from scheduler.topology import CompactTopology, Tier, intern


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a device sits in the PCIe tree; ``switch`` None means directly on the root port."""

    socket: int
    numa: int
    root: int
    switch: int | None


def tier_between(a: Slot, b: Slot) -> Tier:
    if a.socket != b.socket:
        return Tier.CROSS_SOCKET
    if a.numa != b.numa:
        return Tier.SAME_SOCKET
    if a.root != b.root:
        return Tier.SAME_NUMA
    if a.switch is not None and a.switch == b.switch:
        return Tier.SAME_SWITCH
    return Tier.SAME_ROOT


def from_slots(
    gpus: list[Slot], nics: list[Slot], nvlink_pairs: set[tuple[int, int]] | None = None
) -> CompactTopology:
    """Tier matrices for devices placed in a PCIe tree; ``nvlink_pairs`` override GPU pairs to NVLINK."""
    links = nvlink_pairs or set()
    gg = [
        [
            Tier.NVLINK if i == j or (min(i, j), max(i, j)) in links else tier_between(gpus[i], gpus[j])
            for j in range(len(gpus))
        ]
        for i in range(len(gpus))
    ]
    gn = [[tier_between(g, n) for n in nics] for g in gpus]
    return intern(gg, gn)


def hgx_like(nvswitch: bool = False) -> CompactTopology:
    """8 GPUs + 8 RDMA NICs: GPU i and NIC i under PCIe switch i; switches 0-3 on socket 0, 4-7 on 1.

    Each switch has its own root port and each socket one NUMA node. ``nvswitch=True`` adds the
    all-to-all NVLink fabric of a real HGX board (every GPU pair at NVLINK); the default is the
    PCIe-only view, which is what the openb replay uses.
    """
    slots = [Slot(socket=i // 4, numa=i // 4, root=i, switch=i) for i in range(8)]
    pairs = {(i, j) for i in range(8) for j in range(i + 1, 8)} if nvswitch else None
    return from_slots(slots, list(slots), pairs)


def hgx_pairs() -> CompactTopology:
    """A denser variant: 8 GPUs and 4 NICs, two GPUs + one NIC per PCIe switch, two switches per root."""
    gpus = [Slot(socket=i // 4, numa=i // 4, root=i // 4 * 2 + (i % 4) // 2, switch=i // 2) for i in range(8)]
    nics = [Slot(socket=k // 2, numa=k // 2, root=k, switch=k) for k in range(4)]
    return from_slots(gpus, nics)


def random_tree_topology(
    rng: random.Random, n_gpus: int, n_nics: int, nvlink_prob: float = 0.0
) -> CompactTopology:
    """Devices scattered over a random PCIe tree, with optional random NVLink pairs."""
    switch_ids = iter(range(1000))
    places: list[Slot] = []
    for socket in range(rng.randint(1, 2)):
        for numa_local in range(rng.randint(1, 2)):
            numa = socket * 2 + numa_local
            for root_local in range(rng.randint(1, 2)):
                root = numa * 2 + root_local
                places.append(Slot(socket, numa, root, None))
                for _ in range(rng.randint(0, 2)):
                    places.append(Slot(socket, numa, root, next(switch_ids)))
    gpus = [rng.choice(places) for _ in range(n_gpus)]
    nics = [rng.choice(places) for _ in range(n_nics)]
    pairs = {(i, j) for i in range(n_gpus) for j in range(i + 1, n_gpus) if rng.random() < nvlink_prob}
    return from_slots(gpus, nics, pairs)


def random_matrix_topology(rng: random.Random, n_gpus: int, n_nics: int) -> CompactTopology:
    """Arbitrary symmetric tier matrices: no tree behind them (non-hierarchical, like NVLink meshes)."""
    gg = [[0] * n_gpus for _ in range(n_gpus)]
    for i in range(n_gpus):
        for j in range(i + 1, n_gpus):
            gg[i][j] = gg[j][i] = rng.randint(0, 5)
    gn = [[rng.randint(1, 5) for _ in range(n_nics)] for _ in range(n_gpus)]
    return intern(gg, gn)


def fabric_cluster(
    nodes: int,
    gpus_per_node: int = 8,
    nodes_per_leaf: int = 32,
    leaves_per_spine: int = 8,
    spines_per_zone: int = 4,
    topology: CompactTopology | None = None,
    cpu_milli: int = 128_000,
    memory_mib: int = 1_048_576,
    gpu_model: str = "H100",
) -> Cluster:
    """A labelled cluster: nodes fill leaves, leaves fill spines, spines fill zones, in order."""
    leaf_key, spine_key, zone_key = DEFAULT_DOMAIN_KEYS
    topo = topology if topology is not None else hgx_like()
    built = []
    for i in range(nodes):
        leaf = i // nodes_per_leaf
        spine = leaf // leaves_per_spine
        zone = spine // spines_per_zone
        labels = {leaf_key: f"leaf-{leaf:04d}", spine_key: f"spine-{spine:03d}", zone_key: f"zone-{zone:02d}"}
        built.append(
            new_node(i, f"node-{i:05d}", cpu_milli, memory_mib, gpu_model, gpus_per_node, topo, labels)
        )
    return Cluster(built)


# -- a generated trace in the openb CSV format (for runs without the real trace) ---------------

OPENB_NODE_COLUMNS = "sn,cpu_milli,memory_mib,gpu,model"
OPENB_POD_COLUMNS = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec"
# (GPUs, CPU milli, memory MiB, model, share of nodes): a small mix of openb-like node types
_NODE_TYPES: tuple[tuple[int, int, int, str, float], ...] = (
    (8, 96_000, 786_432, "V100M32", 0.35),
    (8, 96_000, 393_216, "G2", 0.25),
    (4, 64_000, 262_144, "T4", 0.15),
    (2, 64_000, 262_144, "P100", 0.15),
    (1, 32_000, 131_072, "G3", 0.10),
)
# (num_gpu, gpu_milli, CPU milli, memory MiB, weight): shares, whole GPUs, CPU-only pods
_POD_TYPES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 1000, 8_000, 30_000, 30),
    (1, 500, 4_000, 15_000, 12),
    (1, 250, 2_000, 8_000, 8),
    (1, 460, 6_000, 12_288, 6),
    (1, 810, 12_000, 24_576, 4),
    (2, 1000, 16_000, 60_000, 6),
    (4, 1000, 32_000, 120_000, 4),
    (8, 1000, 64_000, 240_000, 3),
    (0, 0, 12_000, 32_000, 12),
    (0, 0, 32_000, 49_152, 3),
)


def openb_like_trace(
    directory: Path, seed: int = 0, nodes: int = 150, pods: int = 1000, multi_gpu_share: float = 0.5
) -> Path:
    """Write ``openb_node_list_gpu_node.csv``, ``openb_pod_list_default.csv`` and
    ``openb_pod_list_multigpu50.csv`` (``multi_gpu_share`` of the GPU pods ask several whole
    GPUs) in the openb columns; returns ``directory``. Synthetic numbers, no relation to openb's."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    weights = [t[4] for t in _NODE_TYPES]
    lines = [OPENB_NODE_COLUMNS]
    for i in range(nodes):
        gpus, cpu, mem, model, _ = rng.choices(_NODE_TYPES, weights)[0]
        lines.append(f"openb-node-{i:04d},{cpu},{mem},{gpus},{model}")
    (directory / "openb_node_list_gpu_node.csv").write_text("\n".join(lines) + "\n")
    models = sorted({t[3] for t in _NODE_TYPES})
    for name, multi in (("default", None), ("multigpu50", multi_gpu_share)):
        lines = [OPENB_POD_COLUMNS]
        for i in range(pods):
            kinds = _POD_TYPES
            if multi is not None and rng.random() < multi:
                kinds = tuple(t for t in _POD_TYPES if t[0] > 1)
            num_gpu, milli, cpu, mem, _ = rng.choices(kinds, [t[4] for t in kinds])[0]
            spec = rng.choice(models) if num_gpu and rng.random() < 0.05 else ""
            lines.append(f"openb-pod-{i:04d},{cpu},{mem},{num_gpu},{milli},{spec}")
        (directory / f"openb_pod_list_{name}.csv").write_text("\n".join(lines) + "\n")
    return directory
