"""railnet-sriov through the real shim and agent, in real namespaces.

This kernel has no SR-IOV, so a sysfs fixture tree (the agent's --sysfs) describes a PF with two
VFs, and veth ends in the host namespace stand in for the netdevs it names: the PF's, and VF 0's.
Moving, renaming, addressing and every path that puts a VF back run for real; setting VF
attributes on the PF cannot succeed on a veth (the kernel refuses it), which is tested as a failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni.spec import errors
from railnet.dev.lab import Lab, ip, links_in
from tests.netns.helpers import Env

PF = "0000:3b:00.0"
VF0 = "0000:3b:00.2"  # has a netdev (a veth end)
VF1 = "0000:3b:00.3"  # no netdev on the host: in use by another pod
ESCAPE = "0000:3b:00.7"  # a bus entry that leads out of the sysfs root
NOT_THERE = "0000:3b:01.0"


@dataclass
class Sriov:
    env: Env
    sysfs: Path
    vf: str  # the VF's host netdev (a veth end)

    def vf_dir(self, address: str) -> Path:
        return self.sysfs / "bus/pci/devices" / address

    def name_netdev(self, address: str, name: str | None) -> None:
        """What the kernel would show under the VF's net/ after its netdev moved or was renamed."""
        net = self.vf_dir(address) / "net"
        shutil.rmtree(net, ignore_errors=True)
        net.mkdir()
        if name:
            (net / name).mkdir()


def build_sysfs(root: Path, pf_netdev: str, vf_netdev: str) -> None:
    """devices/pci0000:3a/<bdf> dirs, bus/pci/devices/<bdf> symlinks, physfn and virtfnN links."""
    devices = root / "devices/pci0000:3a/0000:3a:00.0"
    bus = root / "bus/pci/devices"
    bus.mkdir(parents=True)
    (devices / PF / "net" / pf_netdev).mkdir(parents=True)
    (devices / PF / "sriov_numvfs").write_text("2\n")
    for index, (address, netdev) in enumerate(((VF0, vf_netdev), (VF1, None))):
        vf = devices / address
        (vf / "net").mkdir(parents=True)
        if netdev:
            (vf / "net" / netdev).mkdir()
        (vf / "infiniband" / f"mlx5_{index + 2}").mkdir(parents=True)
        (vf / "physfn").symlink_to(f"../{PF}")
        (devices / PF / f"virtfn{index}").symlink_to(f"../{address}")
    for address in (PF, VF0, VF1):
        (bus / address).symlink_to(f"../../../devices/pci0000:3a/0000:3a:00.0/{address}")
    (bus / ESCAPE).symlink_to("/etc")


@pytest.fixture
def sriov(lab: Lab) -> Sriov:
    pf, vf = lab.nic("pf"), lab.nic("vf0")
    root = lab.tmp / "sys"
    build_sysfs(root, pf, vf)
    env = Env(lab, pf, lab.agent(sysfs=root), lab.install_shim())
    return Sriov(env, root, vf)


@pytest.fixture
def pod(lab: Lab) -> str:
    return lab.netns("pod")


def conf(version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
    ipam = extra.pop("ipam", {"type": "railnet-ipam", "ranges": [[{"subnet": "10.91.0.0/24"}]]})
    return {"cniVersion": version, "name": "sriov0", "type": "railnet-sriov", "deviceID": VF0, "ipam": ipam,
            **extra}


def link_json(name: str, netns: str | None = None) -> dict[str, Any] | None:
    where = ["-n", Path(netns).name] if netns else []
    try:
        return json.loads(ip(*where, "-j", "addr", "show", "dev", name))[0]  # type: ignore[no-any-return]
    except RuntimeError:
        return None


def assert_error(call: Any, code: int, *words: str) -> None:
    assert call.code != 0 and call.output is not None, call
    assert call.output["code"] == code, call.output
    text = (call.output["msg"] + " " + call.output.get("details", "")).lower()
    for word in words:
        assert word.lower() in text, call.output


def assert_vf_home(s: Sriov, pod: str, mac: str, mtu: int) -> None:
    """The VF is on the host under its own name with its own MAC and MTU, up as it was; the pod has
    only lo; no address held, no record."""
    link = link_json(s.vf)
    assert link is not None, f"VF {s.vf} is not back on the host"
    assert (link["address"], link["mtu"]) == (mac, mtu)
    assert "UP" in link["flags"]
    s.env.assert_clean(pod)


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_add_moves_vf_in_and_del_returns_it(sriov: Sriov, pod: str, version: str) -> None:
    before = link_json(sriov.vf)
    assert before is not None
    config = conf(version, mtu=1400)  # no mac: a VF's MAC is set on the PF, which a veth refuses
    add = sriov.env.call("railnet-sriov", "ADD", config, cid="c1", ifname="net1", netns=pod)
    assert add.ok, add.output
    assert add.output is not None
    iface = add.output["interfaces"][0]
    assert iface["name"] == "net1" and iface["mac"] == before["address"]
    assert iface.get("pciID") == (VF0 if version == "1.1.0" else None)  # a 1.1.0 field
    assert links_in(pod) == ["lo", "net1"]
    assert link_json(sriov.vf) is None, "the VF's netdev must have left the host"
    inside = link_json("net1", pod)
    assert inside is not None and inside["mtu"] == 1400 and inside["address"] == before["address"]
    assert [a["local"] for a in inside["addr_info"] if a["family"] == "inet"] == [
        add.output["ips"][0]["address"].split("/")[0]]
    assert "from 10.91.0." in ip("-n", Path(pod).name, "rule")  # policy routing, as macvlan's

    check = sriov.env.call("railnet-sriov", "CHECK", {**config, "prevResult": add.output}, cid="c1",
                           ifname="net1", netns=pod)
    assert check.ok, check.output

    for _ in range(2):  # DEL is idempotent
        delete = sriov.env.call("railnet-sriov", "DEL", config, cid="c1", ifname="net1", netns=pod)
        assert delete.ok, delete.output
        assert_vf_home(sriov, pod, before["address"], before["mtu"])


def test_del_after_the_netns_is_gone(sriov: Sriov, lab: Lab, pod: str) -> None:
    before = link_json(sriov.vf)
    assert before is not None
    podside = f"{lab.prefix}n1"
    add = sriov.env.call("railnet-sriov", "ADD", conf(), cid="c2", ifname=podside,
                         netns=pod)
    assert add.ok, add.output
    ip("netns", "del", Path(pod).name)
    lab.namespaces.remove(Path(pod).name)
    # A physical VF comes back to the host under its pod-side name; a veth is destroyed instead, so
    # recreate one under that name (with another MAC, as if the pod had changed it) and point the
    # fixture's net/ at it, as sysfs would show.
    lab.links.append(podside)
    ip("link", "add", podside, "address", "02:00:00:00:91:02", "type", "veth", "peer", "name", f"{podside}p")
    sriov.name_netdev(VF0, podside)

    delete = sriov.env.call("railnet-sriov", "DEL", conf(), cid="c2", ifname=podside, netns=pod)
    assert delete.ok, delete.output
    back = link_json(sriov.vf)
    assert back is not None and back["address"] == before["address"], "renamed back, MAC restored"
    assert link_json(podside) is None
    assert sriov.env.allocations() == 0 and sriov.env.records() == 0
    again = sriov.env.call("railnet-sriov", "DEL", conf(), cid="c2", ifname=podside, netns=pod)
    assert again.ok, again.output


def test_vf_in_use_is_a_clear_error(sriov: Sriov, pod: str) -> None:
    add = sriov.env.call("railnet-sriov", "ADD", conf(deviceID=VF1), cid="c3", ifname="net1", netns=pod)
    assert_error(add, errors.MASTER_NOT_FOUND, VF1, "in use or has no netdev")
    sriov.env.assert_clean(pod)
    assert link_json(sriov.vf) is not None


@pytest.mark.parametrize(("device_id", "code", "words"), [
    ("../../etc", errors.INVALID_CONFIG, ("not a PCI address",)),
    ("eth0", errors.INVALID_CONFIG, ("not a PCI address",)),
    (PF, errors.INVALID_CONFIG, ("not an SR-IOV VF",)),
    (ESCAPE, errors.INVALID_CONFIG, ("outside the sysfs root",)),
    (NOT_THERE, errors.MASTER_NOT_FOUND, ("not found",)),
])
def test_bad_device_id_touches_nothing(sriov: Sriov, pod: str, device_id: str, code: int,
                                       words: tuple[str, ...]) -> None:
    before = link_json(sriov.vf)
    add = sriov.env.call("railnet-sriov", "ADD", conf(deviceID=device_id), cid="c4", ifname="net1", netns=pod)
    assert_error(add, code, *words)
    assert link_json(sriov.vf) == before
    sriov.env.assert_clean(pod)


def test_pf_refusing_vf_settings_leaves_everything_as_it_was(sriov: Sriov, pod: str) -> None:
    before = link_json(sriov.vf)
    assert before is not None
    settings = {"mac": "02:00:00:00:91:05", "vlan": 100, "vlanQoS": 3, "spoofchk": "off", "trust": "on",
                "linkState": "enable"}
    add = sriov.env.call("railnet-sriov", "ADD", conf(**settings), cid="c5", ifname="net1", netns=pod)
    # EOPNOTSUPP (95), not ERANGE (a short attribute gets 34 here): the kernel's attribute policy accepted every IFLA_VF_* layout and
    # the request reached the driver, which (a veth) has no VF operations.
    assert_error(add, errors.KERNEL_REFUSED, f"set VF 0 of {sriov.env.nic}", "vlan 100", "errno 95")
    assert_vf_home(sriov, pod, before["address"], before["mtu"])


def test_failure_after_the_move_returns_the_vf(sriov: Sriov, pod: str) -> None:
    """A sysctl the kernel does not have fails after the VF is in the pod with a new MTU."""
    before = link_json(sriov.vf)
    assert before is not None
    add = sriov.env.call("railnet-sriov", "ADD", conf(mtu=1300, sysctl={"no_such_knob": "1"}),
                         cid="c6", ifname="net1", netns=pod)
    assert_error(add, errors.INVALID_CONFIG, "unknown sysctl")
    assert_vf_home(sriov, pod, before["address"], before["mtu"])


def test_ipam_failure_leaves_the_vf(sriov: Sriov, pod: str) -> None:
    before = link_json(sriov.vf)
    assert before is not None
    add = sriov.env.call("railnet-sriov", "ADD", conf(runtimeConfig={"ips": ["10.99.0.5/24"]}), cid="c7",
                         ifname="net1", netns=pod)
    assert_error(add, errors.INVALID_CONFIG, "10.99.0.5")
    assert_vf_home(sriov, pod, before["address"], before["mtu"])


def test_ifname_taken_in_the_pod(sriov: Sriov, pod: str) -> None:
    """The pod's own net1 stays (railnet never takes out an interface it did not move in)."""
    ip("-n", Path(pod).name, "link", "add", "net1", "type", "veth", "peer", "name", "other")
    before = link_json(sriov.vf)
    add = sriov.env.call("railnet-sriov", "ADD", conf(), cid="c8", ifname="net1", netns=pod)
    assert_error(add, errors.INTERFACE_EXISTS, "net1")
    assert sorted(links_in(pod)) == ["lo", "net1", "other"]
    assert link_json(sriov.vf) == before
    assert sriov.env.allocations() == 0 and sriov.env.records() == 0



@pytest.mark.parametrize("point", ["add:link-created", "add:configured"])
def test_agent_killed_with_the_vf_in_the_pod(sriov: Sriov, pod: str, point: str) -> None:
    """SIGKILL at a fault point after the move (the record says 'adding', no result): after a
    restart DEL finds the VF in the pod, removes any policy rule, and puts it back."""
    before = link_json(sriov.vf)
    assert before is not None
    agent = sriov.env.agent
    marker = sriov.env.lab.tmp / f"fault-{point.replace(':', '-')}"
    agent.kill()
    agent.start(env={"RAILNET_FAULT_POINT": point, "RAILNET_FAULT_FILE": str(marker)})
    shim = subprocess.Popen([str(sriov.env.bin_dir / "railnet-sriov")], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL,
                            env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c9", "CNI_IFNAME": "net1",
                                 "CNI_NETNS": pod, "CNI_PATH": str(sriov.env.bin_dir), **agent.env()})
    assert shim.stdin is not None
    shim.stdin.write(json.dumps(conf()).encode())
    shim.stdin.close()
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline, "the agent never reached the fault point"
        time.sleep(0.01)
    agent.kill()
    shim.wait(timeout=30)
    assert "net1" in links_in(pod)  # the kill landed with the VF in the pod
    agent.start()
    delete = sriov.env.call("railnet-sriov", "DEL", conf(), cid="c9", ifname="net1", netns=pod)
    assert delete.ok, delete.output
    assert_vf_home(sriov, pod, before["address"], before["mtu"])


def test_gc_returns_vfs_of_attachments_no_longer_listed_and_status(sriov: Sriov, pod: str) -> None:
    before = link_json(sriov.vf)
    assert before is not None
    assert sriov.env.call("railnet-sriov", "STATUS", conf()).ok
    status = sriov.env.call("railnet-sriov", "STATUS", conf(deviceID=VF1))
    assert_error(status, errors.NOT_AVAILABLE, "in use or has no netdev")
    add = sriov.env.call("railnet-sriov", "ADD", conf(), cid="c10", ifname="net1", netns=pod)
    assert add.ok, add.output
    keep = conf(**{"cni.dev/valid-attachments": [{"containerID": "c10", "ifname": "net1"}]})
    assert sriov.env.call("railnet-sriov", "GC", keep).ok
    assert links_in(pod) == ["lo", "net1"] and sriov.env.records() == 1
    gone = conf(**{"cni.dev/valid-attachments": []})
    assert sriov.env.call("railnet-sriov", "GC", gone).ok
    assert_vf_home(sriov, pod, before["address"], before["mtu"])
