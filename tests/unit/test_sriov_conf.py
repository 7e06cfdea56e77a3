"""railnet-sriov without a kernel: config validation, finding a VF in a sysfs fixture tree, and the
VF-settings netlink attributes (layouts from linux/if_link.h)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from cni.linux.rtnl import (
    IFLA_VF_INFO,
    IFLA_VF_LINK_STATE,
    IFLA_VF_MAC,
    IFLA_VF_SPOOFCHK,
    IFLA_VF_TRUST,
    IFLA_VF_VLAN,
    IFLA_VFINFO_LIST,
    _vf_info,
    attr,
    parse_attrs,
    parse_vf_infos,
)
from cni.spec.errors import INVALID_CONFIG, MASTER_NOT_FOUND, CniError
from cni.sriov.plugin import STATE_KEY, parse_conf
from cni.sriov.vf import resolve_vf

BASE: dict[str, Any] = {"cniVersion": "1.1.0", "name": "sriov0", "type": "railnet-sriov",
                        "deviceID": "0000:3b:02.1", "ipam": {"type": "railnet-ipam", "pool": "rail0"}}


def test_full_config_and_the_settings_it_asks_for() -> None:
    conf = parse_conf({**BASE, "vlan": 100, "vlanQoS": 3, "mac": "02:00:00:00:00:AA", "spoofchk": "off",
                       "trust": "on", "linkState": "enable", "mtu": 9000, "sysctl": {"arp_ignore": "2"},
                       "capabilities": {"deviceID": True}})
    assert conf.wanted_device_id() == "0000:3b:02.1"
    assert conf.vf_settings(conf.wanted_mac()) == {"mac": "02:00:00:00:00:aa", "vlan": 100, "qos": 3,
                                                   "spoofchk": False, "trust": True, "link_state": "enable"}


def test_sriov_cni_spelling_of_link_state_and_no_settings_by_default() -> None:
    assert parse_conf({**BASE, "link_state": "disable"}).link_state == "disable"
    assert parse_conf(BASE).vf_settings(None) == {}  # nothing asked: the PF is not touched
    assert parse_conf({**BASE, "vlan": 0}).vf_settings(None) == {"vlan": 0, "qos": 0}  # 0 clears a VLAN


def test_runtime_config_wins() -> None:
    conf = parse_conf({**BASE, "runtimeConfig": {"deviceID": "0000:3b:02.2", "mac": "02:00:00:00:00:01"}})
    assert conf.wanted_device_id() == "0000:3b:02.2"
    assert conf.wanted_mac() == "02:00:00:00:00:01"


@pytest.mark.parametrize("change", [
    {"vlan": 4095}, {"vlan": -1}, {"vlan": "100"}, {"vlan": True}, {"vlan": 1.5},
    {"vlanQoS": 8}, {"vlanQoS": 2},  # a priority without a VLAN
    {"vlan": 0, "vlanQoS": 1},
    {"spoofchk": "yes"}, {"spoofchk": True}, {"trust": "ON"}, {"linkState": "up"}, {"link_state": 1},
    {"mtu": 67}, {"mtu": 65536}, {"mtu": "9000"}, {"mac": "02:00:00:00:00"}, {"deviceID": 5},
    {"sysctl": {"../x": "1"}}, {"sysctl": {"arp_ignore": "x"}}, {STATE_KEY: {"hostName": "eth0"}},
    {"policyRouting": "maybe"},
])
def test_invalid_values_are_config_errors(change: dict[str, Any]) -> None:
    with pytest.raises(CniError) as err:
        conf = parse_conf({**BASE, **change})
        conf.wanted_device_id()
    assert err.value.code == INVALID_CONFIG


@pytest.mark.parametrize("config", [{k: v for k, v in BASE.items() if k != "deviceID"},
                                    {**BASE, "deviceID": "", "runtimeConfig": {}},
                                    {**BASE, "runtimeConfig": {"mac": "nope"}}])
def test_missing_device_id_or_bad_runtime_mac(config: dict[str, Any]) -> None:
    conf = parse_conf(config)
    with pytest.raises(CniError) as err:
        conf.wanted_device_id()
        conf.wanted_mac()
    assert err.value.code == INVALID_CONFIG


# ---- sysfs ---------------------------------------------------------------------------------------
PF, VF0, VF1 = "0000:3b:00.0", "0000:3b:00.2", "0000:3b:00.3"


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    devices = tmp_path / "devices/pci0000:3a"
    bus = tmp_path / "bus/pci/devices"
    bus.mkdir(parents=True)
    (devices / PF / "net/ens1f0np0").mkdir(parents=True)
    (devices / PF / "net/pf0vf1").mkdir(parents=True)  # a switchdev representor: not the uplink
    (devices / PF / "net/pf0vf1/phys_port_name").write_text("pf0vf1\n")
    for index, address in ((1, VF0), (4, VF1)):  # VF numbers need not follow the addresses
        (devices / address / "net").mkdir(parents=True)
        (devices / address / "physfn").symlink_to(f"../{PF}")
        (devices / PF / f"virtfn{index}").symlink_to(f"../{address}")
    (devices / VF0 / "net/ens1f0v1").mkdir()
    (devices / VF0 / "infiniband/mlx5_5").mkdir(parents=True)
    for address in (PF, VF0, VF1):
        (bus / address).symlink_to(f"../../../devices/pci0000:3a/{address}")
    return tmp_path


def test_resolves_vf_number_netdevs_and_rdma_device(sysfs: Path) -> None:
    vf = resolve_vf(sysfs, "3B:00.2")  # domain optional, case-insensitive
    assert (vf.pci_address, vf.index, vf.pf_pci_address, vf.pf_netdev, vf.netdev, vf.rdma_device) == (
        VF0, 1, PF, "ens1f0np0", "ens1f0v1", "mlx5_5")
    in_use = resolve_vf(sysfs, VF1)
    assert (in_use.index, in_use.netdev, in_use.rdma_device) == (4, None, None)


def test_bad_device_ids(sysfs: Path, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (sysfs / "bus/pci/devices/0000:3b:00.7").symlink_to(outside)  # a bus entry leaving the root
    escaped = sysfs / "devices/pci0000:3a/0000:3b:00.6"  # a VF whose physfn leaves the root
    escaped.mkdir()
    (escaped / "physfn").symlink_to(outside)
    (sysfs / "bus/pci/devices/0000:3b:00.6").symlink_to("../../../devices/pci0000:3a/0000:3b:00.6")
    cases = {"../../etc": (INVALID_CONFIG, "not a PCI address"), "/etc": (INVALID_CONFIG, "not a PCI address"),
             "0000:3b:00.0/../x": (INVALID_CONFIG, "not a PCI address"),
             PF: (INVALID_CONFIG, "not an SR-IOV VF"),
             "0000:3b:00.7": (INVALID_CONFIG, "outside the sysfs root"),
             "0000:3b:00.6": (INVALID_CONFIG, "outside the sysfs root"),
             "0000:3b:09.0": (MASTER_NOT_FOUND, "not found")}
    for device_id, (code, words) in cases.items():
        with pytest.raises(CniError) as err:
            resolve_vf(sysfs, device_id)
        assert (err.value.code, words in err.value.msg) == (code, True), (device_id, err.value)


def test_vf_not_listed_by_its_pf(sysfs: Path) -> None:
    (sysfs / "devices/pci0000:3a" / PF / "virtfn4").unlink()  # VFs re-created under other numbers
    with pytest.raises(CniError) as err:
        resolve_vf(sysfs, VF1)
    assert err.value.code == MASTER_NOT_FOUND and "not listed" in err.value.msg


# ---- netlink attributes --------------------------------------------------------------------------
def test_vf_settings_message_layout() -> None:
    msg = _vf_info(7, mac="02:00:00:00:00:0a", vlan=100, qos=3, spoofchk=False, trust=True, link_state="disable")
    (kind, outer), = parse_attrs(msg).items()
    assert kind == IFLA_VFINFO_LIST
    (kind, inner), = parse_attrs(outer).items()
    assert kind == IFLA_VF_INFO
    fields = parse_attrs(inner)
    assert len(fields[IFLA_VF_MAC]) == 36  # struct ifla_vf_mac { __u32 vf; __u8 mac[32]; }
    assert fields[IFLA_VF_MAC][:10] == struct.pack("=I", 7) + bytes.fromhex("02000000000a")
    assert struct.unpack("=III", fields[IFLA_VF_VLAN]) == (7, 100, 3)
    assert struct.unpack("=II", fields[IFLA_VF_SPOOFCHK]) == (7, 0)
    assert struct.unpack("=II", fields[IFLA_VF_TRUST]) == (7, 1)
    assert struct.unpack("=II", fields[IFLA_VF_LINK_STATE]) == (7, 2)
    assert set(parse_attrs(parse_attrs(parse_attrs(_vf_info(0, trust=False))[IFLA_VFINFO_LIST])[IFLA_VF_INFO])) == {
        IFLA_VF_TRUST}


def test_reading_vf_settings_as_the_kernel_reports_them() -> None:
    def vf(n: int, mac: str, vlan: int, spoofchk: int, trust: int, state: int) -> bytes:
        return attr(IFLA_VF_INFO, attr(IFLA_VF_MAC, struct.pack("=I", n) + bytes.fromhex(mac).ljust(32, b"\0"))
                    + attr(IFLA_VF_VLAN, struct.pack("=III", n, vlan, 0))
                    + attr(IFLA_VF_SPOOFCHK, struct.pack("=Ii", n, spoofchk))
                    + attr(IFLA_VF_LINK_STATE, struct.pack("=II", n, state))
                    + attr(IFLA_VF_TRUST, struct.pack("=Ii", n, trust)))

    got = parse_vf_infos(vf(0, "000000000000", 0, 1, -1, 0) + vf(1, "02000000000b", 42, -1, 0, 1))
    assert (got[0].mac, got[0].vlan, got[0].spoofchk, got[0].trust, got[0].link_state) == (
        "00:00:00:00:00:00", 0, True, None, "auto")  # -1: the driver has no trust knob
    assert (got[1].mac, got[1].vlan, got[1].spoofchk, got[1].trust, got[1].link_state) == (
        "02:00:00:00:00:0b", 42, None, False, "enable")
