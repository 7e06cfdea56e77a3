"""CDI specs for a claim's RDMA NICs: which character devices a NIC needs and the spec file that
hands them to the container runtime (containerd reads CDI specs from its `cdi_spec_dirs`).

A NIC's RDMA character devices, found from sysfs the way the kernel lays them out:
- `uverbsN` for each entry of `<pci device>/infiniband_verbs/` (the verbs interface: ibv_open_device);
- `umadN` and `issmN` for each entry of `<pci device>/infiniband_mad/` (InfiniBand management; only
  on InfiniBand ports, where MAD traffic is the application's business);
- `rdma_cm`, shared by all NICs (connection manager), when the node has it.
Host paths are under `dev_root` (normally /dev; a fixture dir in tests), container paths under
/dev/infiniband. A NIC without a verbs device cannot be prepared: it is an error, not an empty spec.

One spec file per claim, `railnet.io-rdma_<claim uid>.json`, kind `railnet.io/rdma`, one CDI device
per allocated NIC named `<claim uid>-<device name>`; written atomically (rename), removed on
unprepare.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from netmanager.topology.model import RdmaNic

VENDOR: Final = "railnet.io"
CLASS: Final = "rdma"
KIND: Final = f"{VENDOR}/{CLASS}"
CDI_VERSION: Final = "0.6.0"  # deviceNodes.hostPath needs >= 0.5.0
CONTAINER_DIR: Final = "/dev/infiniband"


class CdiError(RuntimeError):
    """A device cannot be handed out; the message says which file is missing and why."""


@dataclass(frozen=True)
class CharDevice:
    name: str  # uverbs0, rdma_cm, ...
    host_path: str
    major: int
    minor: int

    def node(self) -> dict[str, Any]:
        return {"path": f"{CONTAINER_DIR}/{self.name}", "hostPath": self.host_path, "type": "c",
                "major": self.major, "minor": self.minor, "permissions": "rw"}


def _char_device(dev_root: Path, name: str) -> CharDevice:
    path = dev_root / "infiniband" / name
    try:
        st = path.stat()
    except OSError as exc:
        raise CdiError(f"RDMA character device {path} is missing ({exc.strerror}): is the NIC's RDMA driver "
                       "(ib_uverbs, rdma_ucm) loaded?") from None
    if not stat.S_ISCHR(st.st_mode):
        raise CdiError(f"{path} is not a character device")
    return CharDevice(name, str(path), os.major(st.st_rdev), os.minor(st.st_rdev))


def char_devices(nic: RdmaNic, sysfs: Path, dev_root: Path) -> list[CharDevice]:
    """The character devices a container needs to use `nic` for RDMA."""
    pci = sysfs / "bus" / "pci" / "devices" / nic.pci_address
    verbs = sorted(p.name for p in (pci / "infiniband_verbs").glob("uverbs*"))
    if not verbs:
        raise CdiError(f"NIC {nic.pci_address} ({nic.rdma_device}) has no verbs device under "
                       f"{pci / 'infiniband_verbs'}: is ib_uverbs loaded?")
    names = list(verbs)
    if nic.link_layer == "InfiniBand":
        names += sorted(p.name for p in (pci / "infiniband_mad").glob("*") if p.name.startswith(("umad", "issm")))
    found = [_char_device(dev_root, n) for n in names]
    if (dev_root / "infiniband" / "rdma_cm").exists():
        found.append(_char_device(dev_root, "rdma_cm"))
    return found


def spec_path(cdi_dir: Path, claim_uid: str) -> Path:
    return cdi_dir / f"{VENDOR}-{CLASS}_{claim_uid}.json"


def cdi_name(claim_uid: str, device: str) -> str:
    return f"{claim_uid}-{device}"


def cdi_id(claim_uid: str, device: str) -> str:
    return f"{KIND}={cdi_name(claim_uid, device)}"


def spec(claim_uid: str, devices: dict[str, list[CharDevice]]) -> dict[str, Any]:
    """{device name: its char devices} -> the CDI spec of one claim."""
    return {"cdiVersion": CDI_VERSION, "kind": KIND,
            "devices": [{"name": cdi_name(claim_uid, device),
                         "containerEdits": {"deviceNodes": [c.node() for c in chars]}}
                        for device, chars in devices.items()]}


def write_spec(cdi_dir: Path, claim_uid: str, body: dict[str, Any]) -> Path:
    cdi_dir.mkdir(parents=True, exist_ok=True)
    path = spec_path(cdi_dir, claim_uid)
    tmp = path.with_name(f".{path.name}.tmp")  # a dot file: not a spec the runtime would load
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def remove_spec(cdi_dir: Path, claim_uid: str) -> None:
    spec_path(cdi_dir, claim_uid).unlink(missing_ok=True)
