"""railnet.dev.fixture_gpu: the GPU and NIC slices of one fixture topology agree with it."""

from __future__ import annotations

from netmanager.dra import slices
from railnet.dev import fixture_gpu


def test_gpu_and_nic_slices_carry_the_topology_addresses() -> None:
    topo = fixture_gpu.topology("n1")
    gpu = fixture_gpu.gpu_slice("n1", topo)
    nic = fixture_gpu.nic_slice("n1", topo)
    assert gpu["spec"]["driver"] == fixture_gpu.DRIVER and gpu["spec"]["pool"]["name"] == "n1"
    assert nic["spec"]["driver"] == "rdma.railnet.io" and nic["spec"]["nodeName"] == "n1"
    bus = {d["attributes"][slices.PCI_BUS_ID]["string"] for d in gpu["spec"]["devices"]}
    assert bus == {g.pci_address for g in topo.gpus}
    nic_bus = {d["attributes"][slices.PCI_BUS_ID]["string"] for d in nic["spec"]["devices"]}
    assert nic_bus == {n.pci_address for n in topo.nics if n.rdma_device}
    # the GPU publishes the NIC driver's switch name, so matchAttribute on it pairs GPU 0 with NIC 0
    g0 = gpu["spec"]["devices"][0]["attributes"]
    n0 = nic["spec"]["devices"][0]["attributes"]
    assert g0["rdma.railnet.io/pcieSwitch"] == n0["rdma.railnet.io/pcieSwitch"]
    assert g0[slices.PCIE_ROOT] == n0[slices.PCIE_ROOT]
    assert all(len(d["attributes"]) <= 32 for d in gpu["spec"]["devices"])
