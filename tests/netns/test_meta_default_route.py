"""`default-route` in real network namespaces: the meta plugin (in this process, the agent's
dispatcher) with the reference `ptp` as the primary (which installs a default route on eth0) and a
railnet-macvlan rail on a veth "NIC"; the pod's routing table is read back with `ip route`. Route
lookups only (`ip route get`), no traffic leaves the namespaces; everything is removed after."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni.attachments import AttachmentStore
from cni.dispatch import Dispatcher
from cni.meta.plugin import Pod
from cni.spec import errors
from ipam.plugin import IpamService
from ipam.pools import PoolRegistry
from ipam.sqlite import Database
from ipam.store import IpamStore
from railnet.dev.lab import REFERENCE_CNI_DIR, Lab, ip, links_in


class Pods:
    """The cluster as the meta plugin sees it: one pod, NADs by namespace/name."""

    def __init__(self) -> None:
        self.annotations: dict[str, str] = {}
        self.nads: dict[str, dict[str, Any]] = {}

    def pod(self, namespace: str, name: str, uid: str = "", fresh: bool = False) -> Pod | None:
        return Pod(namespace, name, "u1", self.annotations)

    def nad(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.nads.get(f"{namespace}/{name}")

    def set_network_status(self, pod: Pod, value: str) -> None:
        pass


class Node:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.nic = lab.nic("nic")
        self.conf_dir = lab.tmp / "net.d"
        self.conf_dir.mkdir()
        (self.conf_dir / "10-pods.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "pods", "plugins": [
                {"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.82.0.0/24"}]],
                                         "routes": [{"dst": "0.0.0.0/0"}],
                                         "dataDir": str(lab.tmp / "host-local")}}]}))
        db = Database(lab.tmp / "railnet.db")
        self.attachments = AttachmentStore(db)
        self.store = IpamStore(db)
        self.pods = Pods()
        self.dispatcher = Dispatcher(IpamService(self.store, PoolRegistry(lab.tmp / "pools")), self.attachments,
                                     Path("/sys"), pods=self.pods)

    def rail(self, name: str, gateway: str | None) -> None:
        """A macvlan rail NAD; without a gateway its IPAM is the reference `static` (railnet-ipam, as
        host-local, always names one)."""
        ipam = ({"type": "railnet-ipam", "ranges": [[{"subnet": "10.83.0.0/24", "gateway": gateway}]]} if gateway
                else {"type": "static", "addresses": [{"address": "10.83.0.9/24"}]})
        self.pods.nads[f"ml/{name}"] = {"config": json.dumps({
            "cniVersion": "1.0.0", "type": "railnet-macvlan", "master": self.nic, "ipam": ipam})}

    def call(self, command: str, netns: str, networks: list[dict[str, Any]],
             prev: dict[str, Any] | None = None) -> tuple[int, dict[str, Any] | None]:
        self.pods.annotations = {"k8s.v1.cni.cncf.io/networks": json.dumps(networks)}
        conf = {"cniVersion": "1.1.0", "name": "railnet", "type": "railnet", "clusterNetwork": "pods",
                "confDir": str(self.conf_dir), **({"prevResult": prev} if prev else {})}
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"c-{Path(netns).name}", "CNI_IFNAME": "eth0",
               "CNI_NETNS": netns, "CNI_PATH": str(REFERENCE_CNI_DIR),
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ml;K8S_POD_NAME=p;K8S_POD_UID=u1"}
        code, out = self.dispatcher.handle("railnet", env, json.dumps(conf))
        return code, json.loads(out) if out else None

    def defaults(self, netns: str) -> list[str]:
        return ip("-n", Path(netns).name, "-4", "route", "show", "default").strip().splitlines()

    def left(self, netns: str) -> tuple[list[str], int, int]:
        """(links in the pod, attachment records, IPAM allocations): (["lo"], 0, 0) when clean."""
        with sqlite3.connect(self.lab.tmp / "railnet.db") as db:
            records = int(db.execute("SELECT COUNT(*) FROM attachment").fetchone()[0])
            allocations = int(db.execute("SELECT COUNT(*) FROM ipam_allocation").fetchone()[0])
        return links_in(netns), records, allocations


@pytest.fixture
def node(lab: Lab) -> Iterator[Node]:
    yield Node(lab)


def test_without_default_route_the_primary_keeps_it(node: Node) -> None:
    node.rail("rail0", "10.83.0.1")
    netns = node.lab.netns("keep")
    code, out = node.call("ADD", netns, [{"name": "rail0"}])
    assert code == 0, out
    defaults = node.defaults(netns)
    assert len(defaults) == 1 and defaults[0].endswith("dev eth0"), defaults
    assert node.call("DEL", netns, [{"name": "rail0"}])[0] == 0
    assert node.left(netns) == (["lo"], 0, 0)


@pytest.mark.parametrize(("listed", "gateway"), [([], "10.83.0.1"), (["10.83.0.254"], "10.83.0.254")])
def test_the_selected_network_takes_the_default_route(node: Node, listed: list[str], gateway: str) -> None:
    node.rail("rail0", "10.83.0.1")
    netns = node.lab.netns("dr")
    networks = [{"name": "rail0", "default-route": listed}]
    code, out = node.call("ADD", netns, networks)
    assert code == 0, out
    assert out is not None
    assert node.defaults(netns) == [f"default via {gateway} dev net1 proto static"], node.defaults(netns)
    assert f"via {gateway} dev net1" in ip("-n", Path(netns).name, "route", "get", "192.0.2.7")
    # the returned result says what the pod has: no default route on eth0 any more
    assert not any(r.get("dst") == "0.0.0.0/0" for r in out.get("routes", [])), out
    assert node.call("CHECK", netns, networks, prev=out)[0] == 0  # the primary's CHECK does not miss it
    assert node.call("DEL", netns, networks)[0] == 0
    assert node.left(netns) == (["lo"], 0, 0)


def test_a_network_without_a_gateway_is_a_clear_error_and_leaves_nothing(node: Node) -> None:
    node.rail("nogw", None)
    netns = node.lab.netns("nogw")
    code, out = node.call("ADD", netns, [{"name": "nogw", "default-route": []}])
    assert code == 1 and out is not None and out["code"] == errors.INVALID_CONFIG, out
    assert out["msg"] == "network ml/nogw (net1) has default-route but no gateway", out
    assert node.left(netns) == (["lo"], 0, 0)


def test_a_gateway_off_the_networks_subnet_is_refused_and_leaves_nothing(node: Node) -> None:
    node.rail("rail0", "10.83.0.1")
    netns = node.lab.netns("off")
    code, out = node.call("ADD", netns, [{"name": "rail0", "default-route": ["192.0.2.1"]}])
    assert code == 1 and out is not None and out["code"] == errors.KERNEL_REFUSED, out
    assert "192.0.2.1" in out["msg"] and "net1" in out["msg"], out
    assert node.left(netns) == (["lo"], 0, 0)


def test_two_gateways_are_refused_before_anything_runs(node: Node) -> None:
    node.rail("rail0", "10.83.0.1")
    netns = node.lab.netns("ecmp")
    code, out = node.call("ADD", netns, [{"name": "rail0", "default-route": ["10.83.0.1", "10.83.0.2"]}])
    assert code == 1 and out is not None and out["code"] == errors.INVALID_CONFIG
    assert "more than one IPv4 gateway" in out["msg"]
    assert node.left(netns) == (["lo"], 0, 0)
