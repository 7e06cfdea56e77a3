"""The deploy/examples manifests work as written: the rail0 network attaches a pod end to end.

The NetworkAttachmentDefinition names its parent NIC by RDMA device (`mlx5_0`). The test builds a
small sysfs tree in which mlx5_0 is the PCI function of one of the lab's veth "NICs", starts an
agent that reads that tree (--sysfs) and serves the example IPPool from its pools dir, and runs
ADD, CHECK and DEL through the installed shim with the NAD's config unchanged (plus the
runtimeConfig a runtime adds for the `mac` capability the NAD declares).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from railnet.dev.lab import Lab, ip
from tests.netns.helpers import Env

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
NAD = EXAMPLES / "network-attachment-rail0.yaml"
IPPOOL = EXAMPLES / "ippool-rail0.yaml"
PCI_FUNCTION = "0000:3b:00.0"
POD_MAC = "02:52:41:00:00:01"


def one_doc(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert doc["kind"] == kind
    return dict(doc)


def rdma_sysfs(root: Path, rdma_device: str, netdev: str) -> Path:
    """A sysfs root where `rdma_device` is a PCI function whose netdev is `netdev`, laid out as on
    Linux: class/infiniband/<dev>/device is a relative link into devices/, the function's
    directory holds net/<netdev>/, and the RoCE port is bound to that netdev."""
    function = root / "devices" / "pci0000:3a" / "0000:3a:00.0" / PCI_FUNCTION
    (function / "net" / netdev).mkdir(parents=True)
    (function / "infiniband" / rdma_device).mkdir(parents=True)
    ib = root / "class" / "infiniband" / rdma_device
    ib.parent.mkdir(parents=True)
    ib.symlink_to(Path("../../devices/pci0000:3a/0000:3a:00.0") / PCI_FUNCTION / "infiniband" / rdma_device)
    (function / "infiniband" / rdma_device / "device").symlink_to(Path("../.."))
    ndevs = function / "infiniband" / rdma_device / "ports" / "1" / "gid_attrs" / "ndevs"
    ndevs.mkdir(parents=True)
    (ndevs / "0").write_text(netdev + "\n")
    pci = root / "bus" / "pci" / "devices"
    pci.mkdir(parents=True)
    (pci / PCI_FUNCTION).symlink_to(Path("../../../devices/pci0000:3a/0000:3a:00.0") / PCI_FUNCTION)
    return root


def pool_addresses(spec: dict[str, Any]) -> set[int]:
    """Every address the example pool may hand out (as integers): its ranges minus its exclusions."""
    hosts = {int(a) for a in ipaddress.ip_network(spec["subnet"]).hosts()}
    allowed: set[int] = set()
    for r in spec["ranges"]:
        start, end = int(ipaddress.ip_address(r["start"])), int(ipaddress.ip_address(r["end"]))
        allowed |= {a for a in hosts if start <= a <= end}
    for item in spec.get("exclude", []):
        if "-" in item:
            lo, hi = (int(ipaddress.ip_address(part)) for part in item.split("-"))
        else:
            net = ipaddress.ip_network(item)
            lo, hi = int(net[0]), int(net[-1])
        allowed = {a for a in allowed if not lo <= a <= hi}
    return allowed


def test_rail0_example_attaches_a_pod(lab: Lab) -> None:
    nad = one_doc(NAD, "NetworkAttachmentDefinition")
    pool = one_doc(IPPOOL, "IPPool")
    config = json.loads(nad["spec"]["config"])
    assert config["ipam"]["pool"] == pool["metadata"]["name"]
    assert "master" not in config and "pciAddress" not in config

    nic = lab.nic("nic")  # mtu 9000, above the NAD's 4200
    sysfs = rdma_sysfs(lab.tmp / "sys", config["rdmaDevice"], nic)
    agent = lab.agent(sysfs=sysfs)
    shutil.copyfile(IPPOOL, agent.pools_dir / f"{pool['metadata']['name']}.yaml")  # the file as shipped
    env = Env(lab, nic, agent, lab.install_shim())
    pod = lab.netns("pod")

    # What a runtime sends for a pod that asks for a MAC: the NAD's config plus runtimeConfig.
    conf = {**config, "runtimeConfig": {"mac": POD_MAC}}
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert add.ok, f"ADD of the example network failed: {add.output}\nagent log:\n{agent.log_path.read_text()}"
    result = add.output
    assert result is not None
    assert [(i["name"], i["mac"]) for i in result["interfaces"]] == [("net1", POD_MAC)]
    (addr,) = result["ips"]
    address = ipaddress.ip_interface(addr["address"])
    assert address.network == ipaddress.ip_network(pool["spec"]["subnet"])
    assert int(address.ip) in pool_addresses(pool["spec"]), f"{address} is outside the pool's ranges or excluded"
    assert addr["gateway"] == pool["spec"]["gateway"]

    name = Path(pod).name
    (link,) = json.loads(ip("-n", name, "-j", "-d", "addr", "show", "net1"))
    assert link["mtu"] == config["mtu"]
    assert link["address"] == POD_MAC
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["linkinfo"]["info_data"]["mode"] == config["mode"]
    assert str(address) in {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}
    routes = json.loads(ip("-n", name, "-j", "route", "show", "table", "all"))
    for route in pool["spec"]["routes"]:
        assert any(r.get("dst") == route["dst"] and r.get("dev") == "net1" for r in routes), routes

    check_conf = {**conf, "prevResult": result}
    check = env.call("railnet-macvlan", "CHECK", check_conf, cid="c1", ifname="net1", netns=pod)
    assert check.ok, check.output
    delete = env.call("railnet-macvlan", "DEL", check_conf, cid="c1", ifname="net1", netns=pod)
    assert delete.ok, delete.output
    env.assert_clean(pod)
    assert nic in ip("-o", "link", "show", nic)  # the parent NIC is untouched
