"""Pure pieces of the CNI path: delegate names, rollback, the NIC resolver, error classification,
sysctl paths and the agent's GC gate."""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from cni.linux.netns import NetnsError, sysctl_path
from cni.linux.nic import resolve_master
from cni.linux.rtnl import RtnlError
from cni.spec import errors
from cni.spec.errors import CniError
from cni.spec.exec import find_plugin, require_bare_name
from cni.spec.rollback import Rollback
from ipam.gate import SharedExclusive


@pytest.mark.parametrize("name", ["host-local", "railnet-ipam", "static", "a.b_c-1"])
def test_bare_plugin_names_pass(name: str) -> None:
    assert require_bare_name(name) == name


@pytest.mark.parametrize("name", ["/bin/sh", "../../bin/sh", "a/b", "..", ".hidden", "", "a..b", "sh\n", "-x"])
def test_paths_are_not_plugin_names(name: str) -> None:
    with pytest.raises(CniError) as exc:
        require_bare_name(name)
    assert exc.value.code == errors.INVALID_CONFIG


def test_relative_cni_path_entries_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rel").mkdir()
    plugin = tmp_path / "rel" / "p"
    plugin.write_text("#!/bin/sh\n")
    plugin.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CniError):
        find_plugin("p", ["rel"])
    assert find_plugin("p", [str(tmp_path / "rel")]) == str(plugin)


def test_rollback_runs_every_undo_in_reverse_and_keeps_the_original_error(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def failing_undo() -> None:
        ran.append("b")
        raise RuntimeError("undo b broke")

    with pytest.raises(ValueError, match="step 3"), caplog.at_level(logging.WARNING), Rollback("test") as rollback:
        rollback.push("a", lambda: ran.append("a"))
        rollback.push("b", failing_undo)
        rollback.push("c", lambda: ran.append("c"))
        raise ValueError("step 3")
    assert ran == ["c", "b", "a"]
    assert "undo of b failed: undo b broke" in caplog.text


def test_rollback_does_nothing_on_success() -> None:
    ran: list[str] = []
    with Rollback("test") as rollback:
        rollback.push("a", lambda: ran.append("a"))
    assert ran == []


def make_nic(sysfs: Path, pci: str, netdevs: dict[str, str | None], rdma: str | None = None,
             bound: str | None = None) -> None:
    """A PCI function with netdevs (name -> phys_port_name) and optionally an RDMA device, laid out
    with symlinks as Linux does (bus/pci/devices/X -> ../../../devices/pci0000:00/X)."""
    device = sysfs / "devices/pci0000:00" / pci
    for name, port in netdevs.items():
        (device / "net" / name).mkdir(parents=True)
        if port is not None:
            (device / "net" / name / "phys_port_name").write_text(port + "\n")
    (sysfs / "bus/pci/devices").mkdir(parents=True, exist_ok=True)
    (sysfs / "bus/pci/devices" / pci).symlink_to(f"../../../devices/pci0000:00/{pci}")
    if rdma:
        ib = sysfs / "class/infiniband" / rdma
        ib.mkdir(parents=True)
        (ib / "device").symlink_to(f"../../../devices/pci0000:00/{pci}")
        if bound:
            (ib / "ports/1/gid_attrs/ndevs").mkdir(parents=True)
            (ib / "ports/1/gid_attrs/ndevs/0").write_text(bound + "\n")


def test_resolver_finds_the_uplink_not_a_representor_or_ipoib_child(tmp_path: Path) -> None:
    make_nic(tmp_path, "0000:1b:00.0", {"eth2": "p0", "pf0vf0": "pf0vf0", "pf0vf1": "pf0vf1"}, "mlx5_0")
    make_nic(tmp_path, "0000:1c:00.0", {"ib0": None, "ib0.8001": None}, "mlx5_1")
    make_nic(tmp_path, "0000:1d:00.0", {"ens3": None, "ens3np0": None}, "mlx5_2", bound="ens3np0")
    assert resolve_master(tmp_path, None, "0000:1b:00.0", None) == "eth2"
    assert resolve_master(tmp_path, None, "1b:00.0", None) == "eth2"  # the domain may be left out
    assert resolve_master(tmp_path, None, None, "mlx5_0") == "eth2"
    assert resolve_master(tmp_path, None, None, "mlx5_1") == "ib0"
    assert resolve_master(tmp_path, None, None, "mlx5_2") == "ens3np0"  # the RoCE GID table's netdev wins


@pytest.mark.parametrize(("pci", "rdma", "code"), [
    ("../../../../etc", None, errors.INVALID_CONFIG),
    ("/etc", None, errors.INVALID_CONFIG),
    ("0000:1b:00.9", None, errors.INVALID_CONFIG),
    ("0000:ff:00.0", None, errors.MASTER_NOT_FOUND),
    (None, "../../etc", errors.INVALID_CONFIG),
    (None, "mlx5_9", errors.MASTER_NOT_FOUND),
    (None, "escape", errors.MASTER_NOT_FOUND),  # a symlink out of the sysfs root is not followed
])
def test_resolver_refuses_bad_names_and_paths_outside_sysfs(tmp_path: Path, pci: str | None, rdma: str | None,
                                                            code: int) -> None:
    outside = tmp_path / "outside"
    (outside / "net" / "eth9").mkdir(parents=True)
    sysfs = tmp_path / "sys"
    (sysfs / "class/infiniband/escape").mkdir(parents=True)
    (sysfs / "class/infiniband/escape/device").symlink_to(outside)
    with pytest.raises(CniError) as exc:
        resolve_master(sysfs, None, pci, rdma)
    assert exc.value.code == code, exc.value


def test_master_by_name_must_be_an_interface_name(tmp_path: Path) -> None:
    assert resolve_master(tmp_path, "ens1f0np0", None, None) == "ens1f0np0"
    with pytest.raises(CniError) as exc:
        resolve_master(tmp_path, "../eth0", None, None)
    assert exc.value.code == errors.INVALID_CONFIG


@pytest.mark.parametrize("parts", [("ipv4", "conf", "..", "x"), ("ipv4", "conf/all"), ("ipv4", ""), ("a\0",)])
def test_sysctl_paths_stay_under_proc_sys_net(parts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        sysctl_path(*parts)


def test_sysctl_path_keeps_a_dotted_interface_name_whole() -> None:
    assert sysctl_path("ipv4", "conf", "net1.100", "arp_ignore") == "/proc/sys/net/ipv4/conf/net1.100/arp_ignore"


def _dispatch_raising(tmp_path: Path, exc: Exception) -> dict[str, object]:
    from cni.attachments import AttachmentStore
    from cni.dispatch import Dispatcher
    from ipam.plugin import IpamService
    from ipam.pools import PoolRegistry
    from ipam.sqlite import Database
    from ipam.store import IpamStore

    db = Database(tmp_path / "db")
    dispatcher = Dispatcher(IpamService(IpamStore(db), PoolRegistry(None)), AttachmentStore(db), tmp_path)

    def boom(req: object) -> None:
        raise exc

    dispatcher.tables["railnet-ipam"]["STATUS"] = boom
    code, out = dispatcher.handle("railnet-ipam", {"CNI_COMMAND": "STATUS"},
                                  '{"cniVersion": "1.1.0", "name": "n", "type": "x"}')
    assert code == 1
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.parametrize(("exc", "code"), [
    (RtnlError(errno.EPERM, "Operation not permitted"), errors.KERNEL_REFUSED),
    (NetnsError(errno.EINVAL, "setns failed"), errors.NETNS_FAILED),
    (PermissionError(errno.EACCES, "no"), errors.INTERNAL),
    (KeyError("bug"), errors.INTERNAL),
])
def test_unexpected_errors_are_classified_not_all_io(tmp_path: Path, exc: Exception, code: int) -> None:
    assert _dispatch_raising(tmp_path, exc)["code"] == code


def test_gc_gate_waits_for_shared_holders_and_blocks_new_ones() -> None:
    gate = SharedExclusive()
    events: list[str] = []
    release = threading.Event()

    def adder(name: str) -> None:
        with gate.shared():
            events.append(f"{name} in")
            release.wait(5)
            events.append(f"{name} out")

    def collector() -> None:
        with gate.exclusive():
            events.append("gc")

    first = threading.Thread(target=adder, args=("add1",))
    first.start()
    while "add1 in" not in events:
        time.sleep(0.001)
    gc = threading.Thread(target=collector)
    gc.start()
    while not gate._waiting:  # the collector is queued behind add1
        time.sleep(0.001)
    second = threading.Thread(target=adder, args=("add2",))
    second.start()
    time.sleep(0.05)
    assert events == ["add1 in"]  # neither the GC nor a new ADD got in
    release.set()
    for t in (first, gc, second):
        t.join(5)
    assert events == ["add1 in", "add1 out", "gc", "add2 in", "add2 out"]
