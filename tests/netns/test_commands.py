"""Every CNI command through the real shim -> agent -> kernel path, for every cniVersion."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cni.spec.versions import SUPPORTED, has_ip_version_field, has_route_table
from railnet.dev.lab import ip, links_in
from tests.netns.helpers import Env, macvlan_conf

DUAL = {"type": "railnet-ipam", "ranges": [[{"subnet": "10.91.0.0/24", "gateway": "10.91.0.254"}],
                                            [{"subnet": "fd00:91::/64"}]],
        "routes": [{"dst": "10.200.0.0/16"}]}


@pytest.mark.parametrize("version", SUPPORTED)
def test_add_check_del_every_version(env: Env, version: str) -> None:
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic, version, ipam=DUAL)
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert add.ok, add.output
    result = add.output
    assert result is not None and result["cniVersion"] == version
    assert [i["name"] for i in result["interfaces"]] == ["net1"]
    assert {str(ipaddress.ip_interface(i["address"]).version) for i in result["ips"]} == {"4", "6"}
    assert all(("version" in i) == has_ip_version_field(version) for i in result["ips"])
    tables = [r for r in result["routes"] if "table" in r]
    if has_route_table(version):  # the per-NIC policy table is reported: one route per address
        assert {r["dst"] for r in tables} == {"10.91.0.0/24", "fd00:91::/64", "0.0.0.0/0", "::/0"}
    else:
        assert tables == []
    assert {"dst": "10.200.0.0/16"} in result["routes"]

    details = ip("-n", Path(pod).name, "-d", "addr", "show", "net1")
    assert "macvlan mode bridge" in details
    assert [i["address"] for i in result["ips"]] == ["10.91.0.1/24", "fd00:91::2/64"]  # .254 is the gateway
    assert all(i["address"] in details for i in result["ips"])
    assert "10.200.0.0/16 via 10.91.0.254" in ip("-n", Path(pod).name, "route")

    check_conf = {**conf, "prevResult": result}
    assert env.call("railnet-macvlan", "CHECK", check_conf, cid="c1", ifname="net1", netns=pod).ok
    assert env.call("railnet-macvlan", "DEL", check_conf, cid="c1", ifname="net1", netns=pod).ok
    env.assert_clean(pod)


def test_policy_routing_per_nic(env: Env) -> None:
    """Two NICs on one subnet: each source address is routed out of its own interface."""
    second = env.lab.nic("nic2")
    pod = env.lab.netns("pod")
    a = env.call("railnet-macvlan", "ADD", macvlan_conf(env.nic), cid="c1", ifname="net1", netns=pod)
    b = env.call("railnet-macvlan", "ADD", macvlan_conf(second), cid="c1", ifname="net2", netns=pod)
    assert a.ok and b.ok, (a.output, b.output)
    name = Path(pod).name
    for result, dev in ((a.output, "net1"), (b.output, "net2")):
        assert result is not None
        src = result["ips"][0]["address"].split("/")[0]
        route = ip("-n", name, "route", "get", "10.90.0.77", "from", src)
        assert f"dev {dev}" in route, route
    for key, value in (("arp_ignore", "1"), ("arp_announce", "2"), ("rp_filter", "2"), ("arp_notify", "1")):
        assert _pod_sysctl(name, f"ipv4/conf/net1/{key}") == value
    for ifname, nic in (("net1", env.nic), ("net2", second)):
        assert env.call("railnet-macvlan", "DEL", macvlan_conf(nic), cid="c1", ifname=ifname, netns=pod).ok
    env.assert_clean(pod)


def _pod_sysctl(netns_name: str, key: str) -> str:
    from cni.linux.netns import NetNS

    with NetNS(f"/var/run/netns/{netns_name}") as ns:
        return ns.read_sysctl(tuple(key.split("/")))


@pytest.mark.parametrize("mode", ["bridge", "private", "vepa", "passthru"])
def test_modes_mtu_and_mac(env: Env, mode: str) -> None:
    pod = env.lab.netns("pod")
    mac = "02:aa:bb:cc:dd:01"
    conf = macvlan_conf(env.nic, mode=mode, mtu=4200, **({} if mode == "passthru" else {"mac": mac}))
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="rdma0", netns=pod)
    assert add.ok, add.output
    details = ip("-n", Path(pod).name, "-d", "link", "show", "rdma0")
    assert f"macvlan mode {mode}" in details and "mtu 4200" in details
    nic_mac = ip("-o", "link", "show", env.nic).split("link/ether ")[1].split()[0]
    assert (nic_mac if mode == "passthru" else mac) in details
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="rdma0", netns=pod).ok
    env.assert_clean(pod)


def test_mac_capability_overrides_config(env: Env) -> None:
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic, mac="02:00:00:00:00:01", runtimeConfig={"mac": "02:00:00:00:00:02"})
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert add.ok and add.output is not None
    assert add.output["interfaces"][0]["mac"] == "02:00:00:00:00:02"
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok


def _fake_sysfs(root: Path, nic: str) -> None:
    """The two sysfs paths railnet reads to map a PCI address or RDMA device to its netdev."""
    (root / "bus/pci/devices/0000:3b:00.0/net" / nic).mkdir(parents=True)
    ib = root / "class/infiniband/mlx5_3"
    ib.mkdir(parents=True)
    (ib / "device").symlink_to(root / "bus/pci/devices/0000:3b:00.0")


@pytest.mark.parametrize("selector", [{"pciAddress": "0000:3b:00.0"}, {"rdmaDevice": "mlx5_3"}])
def test_master_by_pci_address_or_rdma_device(lab, selector: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    nic = lab.nic("nic")
    sysfs = lab.tmp / "sysfs"
    _fake_sysfs(sysfs, nic)
    env = Env(lab, nic, lab.agent(sysfs=sysfs), lab.install_shim())
    pod = lab.netns("pod")
    conf = macvlan_conf(nic)
    del conf["master"]
    conf.update(selector)
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert add.ok, add.output
    assert "@if" in ip("-n", Path(pod).name, "link", "show", "net1")
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
    env.assert_clean(pod)


def test_chained_after_prev_result(env: Env) -> None:
    """As the second plugin of a conflist: our interface is appended and our IPs re-indexed."""
    pod = env.lab.netns("pod")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": pod}],
            "ips": [{"address": "192.168.5.5/24", "interface": 0}], "routes": []}
    conf = macvlan_conf(env.nic, "1.0.0", prevResult=prev)
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert add.ok and add.output is not None
    assert [i["name"] for i in add.output["interfaces"]] == ["eth0", "net1"]
    assert add.output["ips"][0] == {"address": "192.168.5.5/24", "interface": 0}
    assert add.output["ips"][1]["interface"] == 1
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok


def test_version_status_and_gc(env: Env) -> None:
    version = env.call("railnet-macvlan", "VERSION", {"cniVersion": "1.1.0"})
    assert version.ok and version.output is not None and "1.1.0" in version.output["supportedVersions"]
    conf = macvlan_conf(env.nic)
    assert env.call("railnet-macvlan", "STATUS", conf).ok

    pods = [env.lab.netns(f"p{i}") for i in range(3)]
    for i, pod in enumerate(pods):
        assert env.call("railnet-macvlan", "ADD", conf, cid=f"c{i}", ifname="net1", netns=pod).ok
    # keep c0 only; c1's netns still exists, c2's netns is already gone
    ip("netns", "del", Path(pods[2]).name)
    env.lab.namespaces.remove(Path(pods[2]).name)
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "c0", "ifname": "net1"}]}
    assert env.call("railnet-macvlan", "GC", gc_conf).ok
    assert env.allocations() == 1 and env.records() == 1
    assert links_in(pods[1]) == ["lo"] and "net1" in links_in(pods[0])

    # the pre-1.1.0-text key is honoured too
    old_key = {**conf, "cni.dev/attachments": []}
    assert env.call("railnet-macvlan", "GC", old_key).ok
    env.assert_clean(pods[0], pods[1])


def test_del_and_check_use_cached_config(env: Env) -> None:
    """After the network config changed (new pool), DEL still releases what ADD took."""
    pod = env.lab.netns("pod")
    before = macvlan_conf(env.nic)
    after = macvlan_conf(env.nic, ipam={"type": "railnet-ipam", "ranges": [[{"subnet": "10.99.0.0/24"}]]})
    assert env.call("railnet-macvlan", "ADD", before, cid="c1", ifname="net1", netns=pod).ok
    assert env.call("railnet-macvlan", "DEL", after, cid="c1", ifname="net1", netns=pod).ok
    env.assert_clean(pod)


def test_named_pool_shared_by_two_networks(lab) -> None:  # type: ignore[no-untyped-def]
    nic = lab.nic("nic")
    pool = {"subnet": "10.95.0.0/29"}
    env = Env(lab, nic, lab.agent(pools={"rail0": pool}), lab.install_shim())
    pod = lab.netns("pod")
    ipam = {"type": "railnet-ipam", "pool": "rail0"}
    a = env.call("railnet-macvlan", "ADD", macvlan_conf(nic, name="netA", ipam=ipam), cid="c1", ifname="net1", netns=pod)
    b = env.call("railnet-macvlan", "ADD", macvlan_conf(nic, name="netB", ipam=ipam), cid="c1", ifname="net2", netns=pod)
    assert a.ok and b.ok and a.output and b.output
    assert a.output["ips"][0]["address"] != b.output["ips"][0]["address"]
    for ifname, name in (("net1", "netA"), ("net2", "netB")):
        assert env.call("railnet-macvlan", "DEL", macvlan_conf(nic, name=name, ipam=ipam), cid="c1",
                        ifname=ifname, netns=pod).ok
    env.assert_clean(pod)


def test_fixed_ip_from_ips_capability(env: Env) -> None:
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic, runtimeConfig={"ips": ["10.90.0.42/24"]})
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert add.ok and add.output is not None
    assert add.output["ips"][0]["address"] == "10.90.0.42/24"
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
    env.assert_clean(pod)
