"""Parsing `nvidia-smi topo -m` and folding it into the sysfs view."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from netmanager.topology.discover import discover
from netmanager.topology.model import Tier
from netmanager.topology.nvidia_smi import label_tier, parse_topo_matrix
from netmanager.topology.sysfs import TopologyError
from railnet.dev.fixtures import BuiltServer, nvidia_smi_topo

Make = Callable[[str], BuiltServer]

# Layout of a current driver's output: tab-separated, bold/underlined header, " X " on the diagonal,
# NIC rows padded with empty cells, and a NIC legend after the matrix legend.
CURRENT_DRIVER = (
    "\t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tNIC1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tNV4\tSYS\tSYS\tPXB\tSYS\t0-31,64-95\t0\t\tN/A\n"
    "GPU1\tNV4\t X \tSYS\tSYS\tPXB\tSYS\t0-31,64-95\t0\t\tN/A\n"
    "GPU2\tSYS\tSYS\t X \tNV4\tSYS\tPIX\t32-63,96-127\t1\t\tN/A\n"
    "GPU3\tSYS\tSYS\tNV4\t X \tSYS\tNODE\t32-63,96-127\t1\t\tN/A\n"
    "NIC0\tPXB\tPXB\tSYS\tSYS\t X \tSYS\t\t\t\t\n"
    "NIC1\tSYS\tSYS\tPIX\tNODE\tSYS\t X \t\t\t\t\n"
    "\n"
    "Legend:\n\n  X    = Self\n  SYS  = Connection traversing PCIe as well as the SMP interconnect\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n\n"
    "NIC Legend:\n\n  NIC0: mlx5_0\n  NIC1: mlx5_3\n"
)

# Older drivers: RDMA device names as column headers, space-aligned, SOC instead of SYS.
OLD_DRIVER = """        GPU0    GPU1    mlx5_0  mlx5_1  CPU Affinity
GPU0     X      PHB     PIX     SOC     0-11
GPU1    PHB      X      PIX     SOC     0-11
mlx5_0  PIX     PIX      X      SOC
mlx5_1  SOC     SOC     SOC      X

Legend:
"""


def test_parse_current_driver_output() -> None:
    smi = parse_topo_matrix(CURRENT_DRIVER)
    assert smi.gpu_count == 4
    assert smi.nic_names == ["mlx5_0", "mlx5_3"]
    assert smi.gpu_gpu[0] == ["X", "NV4", "SYS", "SYS"]
    assert smi.gpu_nic == [["PXB", "SYS"], ["PXB", "SYS"], ["SYS", "PIX"], ["SYS", "NODE"]]
    assert [smi.nvlinks(0, j) for j in range(4)] == [0, 4, 0, 0]


def test_parse_old_driver_output() -> None:
    smi = parse_topo_matrix(OLD_DRIVER)
    assert (smi.gpu_count, smi.nic_names) == (2, ["mlx5_0", "mlx5_1"])
    assert smi.gpu_nic == [["PIX", "SOC"], ["PIX", "SOC"]]
    assert label_tier("SOC") == Tier.CROSS_SOCKET


@pytest.mark.parametrize(
    ("label", "tier"),
    [("NV18", Tier.NVLINK), ("PIX", Tier.SAME_SWITCH), ("PXB", Tier.SAME_SWITCH), ("PHB", Tier.SAME_ROOT),
     ("NODE", Tier.SAME_NUMA), ("SYS", Tier.CROSS_SOCKET), ("X", None), ("OK", None)],
)
def test_label_tiers(label: str, tier: Tier | None) -> None:
    assert label_tier(label) == tier


# A DGX A100 as its driver prints it (R470 era): RDMA device names as columns, CPU and NUMA
# affinity, the full legend. Written by hand, "|" standing for the tab separator.
DGX_A100 = (
    """
|GPU0|GPU1|GPU2|GPU3|GPU4|GPU5|GPU6|GPU7|mlx5_0|mlx5_1|mlx5_2|mlx5_3|mlx5_4|mlx5_5|mlx5_6|mlx5_7|mlx5_8|mlx5_9|CPU Affinity|NUMA Affinity
GPU0| X |NV12|NV12|NV12|NV12|NV12|NV12|NV12|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|SYS|SYS|48-63,176-191|3
GPU1|NV12| X |NV12|NV12|NV12|NV12|NV12|NV12|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|SYS|SYS|48-63,176-191|3
GPU2|NV12|NV12| X |NV12|NV12|NV12|NV12|NV12|SYS|SYS|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|16-31,144-159|1
GPU3|NV12|NV12|NV12| X |NV12|NV12|NV12|NV12|SYS|SYS|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|16-31,144-159|1
GPU4|NV12|NV12|NV12|NV12| X |NV12|NV12|NV12|SYS|SYS|SYS|SYS|NODE|NODE|PXB|PXB|SYS|SYS|112-127,240-255|7
GPU5|NV12|NV12|NV12|NV12|NV12| X |NV12|NV12|SYS|SYS|SYS|SYS|NODE|NODE|PXB|PXB|SYS|SYS|112-127,240-255|7
GPU6|NV12|NV12|NV12|NV12|NV12|NV12| X |NV12|SYS|SYS|SYS|SYS|SYS|SYS|SYS|SYS|PXB|PXB|80-95,208-223|5
GPU7|NV12|NV12|NV12|NV12|NV12|NV12|NV12| X |SYS|SYS|SYS|SYS|SYS|SYS|SYS|SYS|PXB|PXB|80-95,208-223|5
mlx5_0|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS| X |PIX|SYS|SYS|SYS|SYS|SYS|SYS|SYS|SYS||
mlx5_1|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|PIX| X |SYS|SYS|SYS|SYS|SYS|SYS|SYS|SYS||
mlx5_2|SYS|SYS|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS| X |PIX|SYS|SYS|SYS|SYS|SYS|SYS||
mlx5_3|SYS|SYS|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|PIX| X |SYS|SYS|SYS|SYS|SYS|SYS||
mlx5_4|SYS|SYS|SYS|SYS|NODE|NODE|SYS|SYS|SYS|SYS|SYS|SYS| X |PIX|NODE|NODE|SYS|SYS||
mlx5_5|SYS|SYS|SYS|SYS|NODE|NODE|SYS|SYS|SYS|SYS|SYS|SYS|PIX| X |NODE|NODE|SYS|SYS||
mlx5_6|SYS|SYS|SYS|SYS|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|NODE|NODE| X |PIX|SYS|SYS||
mlx5_7|SYS|SYS|SYS|SYS|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|NODE|NODE|PIX| X |SYS|SYS||
mlx5_8|SYS|SYS|SYS|SYS|SYS|SYS|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|SYS|SYS| X |PIX||
mlx5_9|SYS|SYS|SYS|SYS|SYS|SYS|PXB|PXB|SYS|SYS|SYS|SYS|SYS|SYS|SYS|SYS|PIX| X ||

Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks
"""
).replace("|", "\t")


def test_parse_dgx_a100_output() -> None:
    smi = parse_topo_matrix(DGX_A100)
    assert smi.gpu_count == 8
    assert smi.nic_names == [f"mlx5_{k}" for k in range(10)]
    assert all(smi.nvlinks(i, j) == (0 if i == j else 12) for i in range(8) for j in range(8))
    assert smi.gpu_nic[0] == ["PXB", "PXB"] + ["SYS"] * 8
    assert smi.gpu_nic[5] == ["SYS"] * 4 + ["NODE", "NODE", "PXB", "PXB", "SYS", "SYS"]
    assert smi.gpu_nic[7][8:] == ["PXB", "PXB"]  # the last NIC columns, just before CPU Affinity
    tiers = [[label_tier(label) for label in row] for row in smi.gpu_nic]
    assert tiers[4][4] == Tier.SAME_NUMA and tiers[4][6] == Tier.SAME_SWITCH and tiers[4][0] == Tier.CROSS_SOCKET


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no matrix here\n", "no matrix header"),
        ("\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \n", "row GPU0 is missing or has fewer"),
        ("\tGPU1\tGPU0\tCPU Affinity\nGPU1\t X \tNV1\nGPU0\tNV1\t X \n", "no matrix header"),
        ("\tGPU0\tGPU2\tCPU Affinity\nGPU0\t X \tNV1\t0\nGPU2\tNV1\t X \t0\n", "not GPU0..GPU1"),
    ],
)
def test_malformed_text_is_a_one_line_error(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message) as err:
        parse_topo_matrix(text, "topo.txt")
    assert "\n" not in str(err.value) and str(err.value).startswith("topo.txt")


def test_nvlink_overrides_pcie_tiers(shared_fixture: Make) -> None:
    built = shared_fixture("pcie-4gpu")
    text = nvidia_smi_topo(built).replace("GPU0\t X \tPHB", "GPU0\t X \tNV4").replace("GPU1\tPHB", "GPU1\tNV4")
    topo = discover(built.root, nvidia_smi_text=text)
    assert topo.gpu_gpu[0][1] == topo.gpu_gpu[1][0] == Tier.NVLINK
    assert topo.gpu_nvlinks[0][1] == 4 and topo.gpu_nvlinks[0][2] == 0
    assert topo.gpu_gpu[0][2] == Tier.CROSS_SOCKET


def test_nvidia_smi_fills_pairs_sysfs_could_only_guess(make_fixture: Make) -> None:
    built = make_fixture("pcie-4gpu")
    for numa_file in (built.root / "devices").rglob("numa_node"):
        numa_file.write_text("-1\n")  # firmware without proximity info: sysfs cannot place devices
    blind = discover(built.root)
    assert blind.gpu_nic[0][0] == Tier.CROSS_SOCKET  # pessimistic guess
    refined = discover(built.root, nvidia_smi_text=nvidia_smi_topo(built))
    assert refined.gpu_nic == built.gpu_nic()  # NODE / SYS / PHB from nvidia-smi
    assert refined.gpu_gpu[2][3] == Tier.SAME_NUMA


def test_disagreement_keeps_sysfs_and_warns(shared_fixture: Make) -> None:
    built = shared_fixture("hgx-h100")
    lines = nvidia_smi_topo(built).splitlines()
    cells = lines[1].split("\t")
    cells[9] = "SYS"  # GPU0 vs NIC0 (under the same switch per sysfs)
    lines[1] = "\t".join(cells)
    topo = discover(built.root, nvidia_smi_text="\n".join(lines))
    assert topo.gpu_nic[0][0] == Tier.SAME_SWITCH
    assert topo.warnings == ["GPU0-mlx5_0: nvidia-smi says SYS, sysfs says SAME_SWITCH; keeping sysfs"]


def test_gpu_count_mismatch_ignores_nvidia_smi(shared_fixture: Make) -> None:
    topo = discover(shared_fixture("hgx-h100").root, nvidia_smi_text=CURRENT_DRIVER)
    assert topo.gpu_nvlinks == []
    assert topo.warnings == ["nvidia-smi lists 4 GPUs but sysfs has 8; nvidia-smi input ignored"]


def test_nics_unknown_to_sysfs_are_reported(shared_fixture: Make) -> None:
    built = shared_fixture("pcie-4gpu")
    text = nvidia_smi_topo(built).replace("NIC1: mlx5_1", "NIC1: mlx5_7")
    topo = discover(built.root, nvidia_smi_text=text)
    assert topo.warnings == ["nvidia-smi NICs not found in sysfs: mlx5_7"]
    assert topo.gpu_nic == built.gpu_nic()
