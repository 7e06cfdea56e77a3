"""Peer tests: the same network through the reference Go plugins and through railnet.

The reference is Debian's containernetworking-plugins (macvlan + host-local). For each
cniVersion both must produce the same link kind, mode, mtu, address families, routes and
result shape; and railnet-ipam must serve the reference macvlan as its IPAM plugin.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from cni.spec.versions import SUPPORTED, convert_result, version_key
from railnet.dev.lab import REFERENCE_CNI_DIR, ip, links_in, run_plugin
from tests.netns.helpers import Env

RANGES = [[{"subnet": "10.93.0.0/24", "rangeStart": "10.93.0.10", "gateway": "10.93.0.1"}],
          [{"subnet": "fd00:93::/64", "gateway": "fd00:93::1"}]]
ROUTES = [{"dst": "10.201.0.0/16"}, {"dst": "fd00:201::/48"}]


def conf(plugin: str, ipam_type: str, master: str, version: str, data_dir: Path) -> dict[str, Any]:
    ipam: dict[str, Any] = {"type": ipam_type, "ranges": RANGES, "routes": ROUTES}
    if ipam_type == "host-local":
        ipam["dataDir"] = str(data_dir)
    c: dict[str, Any] = {"cniVersion": version, "name": "peer", "type": plugin, "master": master,
                         "mode": "bridge", "mtu": 4000, "ipam": ipam}
    if plugin == "railnet-macvlan":
        c["policyRouting"] = False  # the reference has no policy routing: compare like with like
    return c


def link_facts(netns: str, ifname: str) -> dict[str, Any]:
    name = Path(netns).name
    details = ip("-n", name, "-d", "link", "show", ifname)
    routes = ip("-n", name, "route", "show", "dev", ifname) + ip("-6", "-n", name, "route", "show", "dev", ifname)
    kept = sorted(line.split(" proto")[0].split(" metric")[0].strip() for line in routes.splitlines()
                  if line and not line.startswith(("fe80", "multicast")))
    return {"kind": "macvlan" if "macvlan mode bridge" in details else details,
            "mtu": details.split(" mtu ")[1].split()[0], "routes": kept}


def shape(result: dict[str, Any]) -> dict[str, Any]:
    """Keys and families, not values: what a runtime relies on."""
    return {
        "top": sorted(result),
        "interfaces": [sorted(i) for i in result["interfaces"]],
        "ips": sorted((sorted(i), ipaddress.ip_interface(i["address"]).version) for i in result["ips"]),
        "routes": sorted(tuple(sorted(r)) for r in result.get("routes", [])),
    }


def reference_versions() -> list[str]:
    call = run_plugin(REFERENCE_CNI_DIR / "macvlan", "VERSION", {"cniVersion": "0.4.0"})
    assert call.ok and call.output is not None
    return list(call.output["supportedVersions"])


@pytest.mark.parametrize("version", SUPPORTED)
def test_same_as_reference_macvlan_host_local(env: Env, version: str) -> None:
    """Where the installed reference does not speak `version` (Debian's stops at 1.0.0), it runs at its
    newest and our result is compared after conversion to that version."""
    peer_versions = reference_versions()
    ref_version = version if version in peer_versions else max((v for v in SUPPORTED if v in peer_versions), key=version_key)
    ref_pod, our_pod = env.lab.netns("ref"), env.lab.netns("our")
    data_dir = env.lab.tmp / "host-local"
    ref_conf = conf("macvlan", "host-local", env.nic, ref_version, data_dir)
    our_conf = conf("railnet-macvlan", "railnet-ipam", env.nic, version, data_dir)

    ref = run_plugin(REFERENCE_CNI_DIR / "macvlan", "ADD", ref_conf, container_id="r1", ifname="net1",
                     netns=ref_pod, cni_path=[REFERENCE_CNI_DIR])
    our = env.call("railnet-macvlan", "ADD", our_conf, cid="o1", ifname="net1", netns=our_pod)
    assert ref.ok, ref.output
    assert our.ok, our.output
    assert ref.output is not None and our.output is not None

    assert our.output["cniVersion"] == version and ref.output["cniVersion"] == ref_version
    assert shape(convert_result(our.output, ref_version)) == shape(ref.output)
    # same first addresses from the same ranges
    assert [i["address"] for i in our.output["ips"]] == [i["address"] for i in ref.output["ips"]]
    assert link_facts(our_pod, "net1") == link_facts(ref_pod, "net1")

    assert run_plugin(REFERENCE_CNI_DIR / "macvlan", "DEL", ref_conf, container_id="r1", ifname="net1",
                      netns=ref_pod, cni_path=[REFERENCE_CNI_DIR]).ok
    assert env.call("railnet-macvlan", "DEL", our_conf, cid="o1", ifname="net1", netns=our_pod).ok
    assert links_in(ref_pod) == links_in(our_pod) == ["lo"]
    env.assert_clean(our_pod)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_railnet_ipam_serves_reference_macvlan(env: Env, version: str) -> None:
    pod = env.lab.netns("pod")
    c = conf("macvlan", "railnet-ipam", env.nic, version, env.lab.tmp)
    # Explicit gateways: the reference macvlan (1.1.1) fails its own CHECK for a route without "gw",
    # with host-local as well ("Expected Route ... GW:<nil> not found in routing table").
    c["ipam"]["routes"] = [{"dst": "10.201.0.0/16", "gw": "10.93.0.1"}, {"dst": "fd00:201::/48", "gw": "fd00:93::1"}]
    add = run_plugin(REFERENCE_CNI_DIR / "macvlan", "ADD", c, container_id="r1", ifname="net1", netns=pod,
                     cni_path=[env.bin_dir, REFERENCE_CNI_DIR], env=env.agent.env())
    assert add.ok, add.output
    assert add.output is not None
    assert [i["address"] for i in add.output["ips"]] == ["10.93.0.10/24", "fd00:93::2/64"]
    assert env.allocations() == 2
    facts = link_facts(pod, "net1")
    assert "10.201.0.0/16 via 10.93.0.1" in facts["routes"]
    if version != "0.4.0":  # the reference skips CHECK below 0.4.0; from there on it calls our IPAM's CHECK
        assert run_plugin(REFERENCE_CNI_DIR / "macvlan", "CHECK", {**c, "prevResult": add.output}, container_id="r1",
                          ifname="net1", netns=pod, cni_path=[env.bin_dir, REFERENCE_CNI_DIR], env=env.agent.env()).ok
    assert run_plugin(REFERENCE_CNI_DIR / "macvlan", "DEL", c, container_id="r1", ifname="net1", netns=pod,
                      cni_path=[env.bin_dir, REFERENCE_CNI_DIR], env=env.agent.env()).ok
    assert env.allocations() == 0 and links_in(pod) == ["lo"]


def test_railnet_macvlan_with_reference_host_local(env: Env) -> None:
    """Any other IPAM type is exec'd from CNI_PATH, as the spec prescribes."""
    pod = env.lab.netns("pod")
    c = conf("railnet-macvlan", "host-local", env.nic, "1.0.0", env.lab.tmp / "hl")
    add = env.call("railnet-macvlan", "ADD", c, cid="c1", ifname="net1", netns=pod)
    assert add.ok, add.output
    assert add.output is not None and add.output["ips"][0]["address"] == "10.93.0.10/24"
    assert env.call("railnet-macvlan", "DEL", c, cid="c1", ifname="net1", netns=pod).ok
    assert links_in(pod) == ["lo"]
    assert not [p for p in (env.lab.tmp / "hl" / "peer").iterdir() if p.name.startswith("10.")]
