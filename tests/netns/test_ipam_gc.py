"""GC of one network never frees another network's addresses in a shared named pool (review items 2/28)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.netns.helpers import Env, macvlan_conf

POOL = {"apiVersion": "railnet.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "shared"},
        "spec": {"subnet": "10.97.0.0/28", "gateway": "10.97.0.1"}}
IPAM = {"type": "railnet-ipam", "pool": "shared"}


def _gc(conf: dict[str, Any], *keep: tuple[str, str]) -> dict[str, Any]:
    return {**conf, "cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in keep]}


def test_gc_of_one_network_keeps_the_other_networks_addresses(env: Env) -> None:
    (env.agent.pools_dir / "shared.yaml").write_text(yaml.safe_dump(POOL))  # the agent reads pools per call
    net_a = macvlan_conf(env.nic, name="netA", ipam=IPAM)
    net_b = macvlan_conf(env.nic, name="netB", ipam=IPAM)
    pod_a, pod_b = env.lab.netns("pa"), env.lab.netns("pb")
    a = env.call("railnet-macvlan", "ADD", net_a, cid="ca", ifname="net1", netns=pod_a)
    b = env.call("railnet-macvlan", "ADD", net_b, cid="cb", ifname="net1", netns=pod_b)
    b2 = env.call("railnet-macvlan", "ADD", net_b, cid="ca", ifname="net2", netns=pod_a)
    assert a.ok and b.ok and b2.ok and a.output and b.output and b2.output, (a.stderr, b.stderr, b2.stderr)
    b_addrs = {b.output["ips"][0]["address"], b2.output["ips"][0]["address"]}

    assert env.call("railnet-macvlan", "GC", _gc(net_a)).ok  # netA has no valid attachment left
    assert env.allocations() == 2 and env.records() == 2
    for cid, ifname, pod in (("cb", "net1", pod_b), ("ca", "net2", pod_a)):
        check = env.call("railnet-macvlan", "CHECK", {**net_b, "prevResult": b.output if cid == "cb" else b2.output},
                         cid=cid, ifname=ifname, netns=pod)
        assert check.ok, check.stderr  # netB's attachments still hold their addresses

    # The freed netA address is handed out again, never one of netB's.
    again = env.call("railnet-macvlan", "ADD", net_a, cid="ca2", ifname="net2", netns=pod_b)
    assert again.ok and again.output is not None
    assert again.output["ips"][0]["address"] not in b_addrs

    # GC of netB keeps what its valid list names and leaves netA alone.
    assert env.call("railnet-macvlan", "GC", _gc(net_b, ("cb", "net1"))).ok
    assert env.allocations() == 2 and env.records() == 2
    assert env.call("railnet-macvlan", "DEL", net_b, cid="cb", ifname="net1", netns=pod_b).ok
    assert env.call("railnet-macvlan", "DEL", net_a, cid="ca2", ifname="net2", netns=pod_b).ok
    env.assert_clean(pod_a, pod_b)


def test_gc_through_railnet_ipam_exec_path(env: Env) -> None:
    """The same rule when another plugin uses railnet-ipam as its IPAM (GC sent to railnet-ipam)."""
    (env.agent.pools_dir / "shared.yaml").write_text(yaml.safe_dump(POOL))
    net_a = {"cniVersion": "1.1.0", "name": "netA", "type": "macvlan", "ipam": IPAM}
    net_b = {**net_a, "name": "netB"}
    pod = env.lab.netns("p")
    assert env.call("railnet-ipam", "ADD", net_a, cid="c1", ifname="net1", netns=pod).ok
    held = env.call("railnet-ipam", "ADD", net_b, cid="c2", ifname="net1", netns=pod)
    assert held.ok and held.output is not None
    assert env.call("railnet-ipam", "GC", _gc(net_a)).ok
    assert env.allocations() == 1
    assert env.call("railnet-ipam", "CHECK", net_b, cid="c2", ifname="net1", netns=pod).ok
    missing = env.call("railnet-ipam", "CHECK", net_a, cid="c1", ifname="net1", netns=pod)
    assert not missing.ok and missing.output is not None
    assert missing.output["code"] == 104, missing.output  # CHECK_FAILED: the address was released
    assert env.call("railnet-ipam", "DEL", net_b, cid="c2", ifname="net1", netns=pod).ok
    assert env.allocations() == 0
