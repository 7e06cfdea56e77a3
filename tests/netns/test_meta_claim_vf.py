"""A DRA claim's VF as the pod's rail, in real namespaces: the meta plugin (the agent's dispatcher, in
this process) hands the claim's VF to railnet-sriov as deviceID, the VF's netdev (a veth end in the
host namespace, named by a sysfs fixture as in test_sriov.py; this kernel has no SR-IOV) moves into
the pod as net1 with the share's egress limit, and DEL puts it back. The claim side is a fake
ClaimSource (the API server and the prepared record are the real node's business: test_dra_rails.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cni.attachments import AttachmentStore
from cni.dispatch import Dispatcher
from cni.linux.netns import NetNS
from cni.meta import egress
from cni.meta.plugin import Pod
from cni.spec import errors
from ipam.plugin import IpamService
from ipam.pools import PoolRegistry
from ipam.sqlite import Database
from ipam.store import IpamStore
from railnet.dev.lab import REFERENCE_CNI_DIR, Lab, links_in
from tests.netns.test_sriov import PF, VF0, build_sysfs
from tests.unit.test_meta_claims import FakeClaimSource, device

RATE = 25 * 10**9


class Pods:
    def __init__(self, networks: list[dict[str, Any]]) -> None:
        self.networks = networks
        self.nads: dict[str, dict[str, Any]] = {}

    def pod(self, namespace: str, name: str, uid: str = "", fresh: bool = False) -> Pod | None:
        return Pod(namespace, name, "u1", {"k8s.v1.cni.cncf.io/networks": json.dumps(self.networks)},
                   {"devs": "p-devs-x"})

    def nad(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.nads.get(f"{namespace}/{name}")

    def set_network_status(self, pod: Pod, value: str) -> None:
        pass


class Node:
    def __init__(self, lab: Lab, claim: Any) -> None:
        self.lab = lab
        self.pf, self.vf = lab.nic("pf"), lab.nic("vf0")
        self.sysfs = lab.tmp / "sys"
        build_sysfs(self.sysfs, self.pf, self.vf)
        self.conf_dir = lab.tmp / "net.d"
        self.conf_dir.mkdir()
        (self.conf_dir / "10-pods.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "pods", "plugins": [
                {"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.84.0.0/24"}]],
                                         "dataDir": str(lab.tmp / "host-local")}}]}))
        self.pods = Pods([{"name": "vf-rail", "interface": "net1", "resourceClaim": {"claimName": "devs"}}])
        self.pods.nads["ml/vf-rail"] = {"config": json.dumps({
            "cniVersion": "1.0.0", "type": "railnet-sriov", "deviceID": "0000:3b:00.3",  # replaced by the claim's
            "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "10.85.0.0/24"}]]}})}
        self.claims = FakeClaimSource(claim)
        db = Database(lab.tmp / "railnet.db")
        self.dispatcher = Dispatcher(IpamService(IpamStore(db), PoolRegistry(lab.tmp / "pools")), AttachmentStore(db),
                                     self.sysfs, pods=self.pods, claims=self.claims)

    def call(self, command: str, netns: str) -> tuple[int, dict[str, Any] | None]:
        conf = {"cniVersion": "1.1.0", "name": "railnet", "type": "railnet", "clusterNetwork": "pods",
                "confDir": str(self.conf_dir)}
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c-vf", "CNI_IFNAME": "eth0", "CNI_NETNS": netns,
               "CNI_PATH": str(REFERENCE_CNI_DIR),
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ml;K8S_POD_NAME=p;K8S_POD_UID=u1"}
        code, out = self.dispatcher.handle("railnet", env, json.dumps(conf))
        return code, json.loads(out) if out else None

    def counts(self) -> tuple[int, int]:
        with sqlite3.connect(self.lab.tmp / "railnet.db") as db:
            return (int(db.execute("SELECT COUNT(*) FROM attachment").fetchone()[0]),
                    int(db.execute("SELECT COUNT(*) FROM ipam_allocation").fetchone()[0]))


VF_CLAIM = device(pci_address=VF0, netdev=None, is_vf=True, pf_pci_address=PF, rdma_device="mlx5_2",
                  share_id="s-1", egress_bps=RATE)


def test_a_claims_vf_moves_into_the_pod_with_its_share_and_comes_back(lab: Lab) -> None:
    node = Node(lab, VF_CLAIM)
    netns = lab.netns("pod")
    code, out = node.call("ADD", netns)
    assert code == 0, out
    assert sorted(links_in(netns)) == ["eth0", "lo", "net1"]
    assert not Path(f"/sys/class/net/{node.vf}").exists(), "the VF's netdev left the host namespace"
    with NetNS(netns) as ns:
        assert egress.current(ns, "net1") == RATE  # the share, on the moved VF
    ((claim, data),) = node.claims.data
    assert claim == VF_CLAIM.claim_name and data is not None
    assert data["interfaceName"] == "net1" and data["ips"][0].startswith("10.85.0.")

    code, out = node.call("DEL", netns)
    assert code == 0, out
    assert links_in(netns) == ["lo"] and Path(f"/sys/class/net/{node.vf}").exists()  # back under its name
    assert node.counts() == (0, 0) and node.claims.data[-1] == (VF_CLAIM.claim_name, None)


@pytest.mark.parametrize(("claim", "text"), [
    (device(pci_address=PF, netdev="unused"), "attaches VFs only"),
    (errors.CniError(errors.TRY_AGAIN_LATER, "ResourceClaim ml/p-devs-x is not prepared on node n"),
     "is not prepared"),
])
def test_a_refused_claim_leaves_the_pod_and_the_vf_alone(lab: Lab, claim: Any, text: str) -> None:
    node = Node(lab, claim)
    netns = lab.netns("pod")
    code, out = node.call("ADD", netns)
    assert code == 1 and out is not None and text in out["msg"], out
    assert out["code"] == (errors.INVALID_CONFIG if isinstance(claim, type(VF_CLAIM)) else errors.TRY_AGAIN_LATER)
    assert links_in(netns) == ["lo"] and Path(f"/sys/class/net/{node.vf}").exists()
    assert node.counts() == (0, 0)
