"""GPU discovery: NVIDIA display/3D controllers among the PCI devices."""

from __future__ import annotations

from .pci import PciDevice, pci_sort_key

NVIDIA_VENDOR = "0x10de"
GPU_CLASSES = (0x0300, 0x0302)  # class >> 8: VGA controller, 3D controller (NVSwitch is 0x0680)

# Marketing names for common data-centre parts (from the PCI ID database); unknown ids map to None.
GPU_MODELS: dict[str, str] = {
    "0x2330": "NVIDIA H100 80GB HBM3",
    "0x2331": "NVIDIA H100 PCIe",
    "0x2335": "NVIDIA H200",
    "0x20b0": "NVIDIA A100-SXM4-40GB",
    "0x20b2": "NVIDIA A100-SXM4-80GB",
    "0x20b5": "NVIDIA A100 80GB PCIe",
    "0x20f1": "NVIDIA A100-PCIE-40GB",
    "0x26b9": "NVIDIA L40S",
    "0x2236": "NVIDIA A10",
    "0x1eb8": "Tesla T4",
}


def is_gpu(device: PciDevice) -> bool:
    return device.vendor == NVIDIA_VENDOR and device.pci_class >> 8 in GPU_CLASSES


def find_gpus(devices: dict[str, PciDevice]) -> list[PciDevice]:
    """GPUs in PCI bus order, which is the order nvidia-smi numbers them in."""
    return sorted((d for d in devices.values() if is_gpu(d)), key=lambda d: pci_sort_key(d.address))
