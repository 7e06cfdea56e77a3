"""Real conflists through railnet's libcni-style runner, with the reference plugins as neighbours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cni.spec import conflist
from cni.spec.errors import CniError
from cni.spec.versions import SUPPORTED, version_key
from railnet.dev.lab import REFERENCE_CNI_DIR, ip, links_in
from tests.netns.helpers import Env


def networks(nic: str, versions: list[str], data_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    primary = {"cniVersions": versions, "name": "pods", "plugins": [
        {"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.60.0.0/24"}]],
                                 "dataDir": str(data_dir)}}]}
    rail = {"cniVersions": versions, "name": "rail", "plugins": [
        {"type": "railnet-macvlan", "master": nic,
         "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "10.61.0.0/24"}]]}},
        {"type": "tuning", "sysctl": {"net.ipv4.conf.net1.arp_filter": "1"}},
    ]}
    return primary, rail


def cni_env(env: Env, netns: str, ifname: str) -> dict[str, str]:
    return {"CNI_CONTAINERID": "c1", "CNI_NETNS": netns, "CNI_IFNAME": ifname,
            "CNI_PATH": f"{env.bin_dir}:{REFERENCE_CNI_DIR}", **env.agent.env()}


@pytest.mark.parametrize("versions", [["0.4.0", "1.0.0"], ["0.3.1", "1.0.0", "1.1.0", "9.0.0"]])
def test_primary_network_then_railnet_chain(env: Env, versions: list[str]) -> None:
    """The pod's eth0 from the reference ptp plugin (the stand-in for Calico), then net1 from a
    chain of railnet-macvlan and the reference tuning plugin, which reads railnet's prevResult."""
    pod = env.lab.netns("pod")
    primary, rail = networks(env.nic, versions, env.lab.tmp / "hl")
    assert conflist.negotiate(rail) == max((v for v in versions if v in SUPPORTED), key=version_key)
    # the installed reference plugins stop at 1.0.0, so run every chain at the highest version both know
    shared = [v for v in versions if v in ("0.3.1", "0.4.0", "1.0.0")]
    primary["cniVersions"] = rail["cniVersions"] = shared
    eth0 = conflist.add(primary, cni_env(env, pod, "eth0"))
    net1 = conflist.add(rail, cni_env(env, pod, "net1"))
    assert "eth0" in [i["name"] for i in eth0["interfaces"]]
    assert [i["name"] for i in net1["interfaces"]] == ["net1"]
    assert set(links_in(pod)) == {"lo", "eth0", "net1"}
    assert "1" in ip("netns", "exec", Path(pod).name, "cat", "/proc/sys/net/ipv4/conf/net1/arp_filter")
    conflist.check(rail, cni_env(env, pod, "net1"), net1)
    conflist.delete(rail, cni_env(env, pod, "net1"), net1)
    conflist.delete(primary, cni_env(env, pod, "eth0"), eth0)
    assert links_in(pod) == ["lo"]
    assert env.allocations() == 0


def test_failed_plugin_rolls_back_the_ones_before(env: Env) -> None:
    pod = env.lab.netns("pod")
    net = {"cniVersion": "1.0.0", "name": "rail", "plugins": [
        {"type": "railnet-macvlan", "master": env.nic,
         "ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "10.62.0.0/24"}]]}},
        {"type": "tuning", "sysctl": {"net.no.such.key": "1"}},
    ]}
    with pytest.raises(CniError):
        conflist.add(net, cni_env(env, pod, "net1"))
    env.assert_clean(pod)


def test_negotiation_refuses_unknown_versions() -> None:
    with pytest.raises(CniError) as exc:
        conflist.negotiate({"cniVersions": ["2.0.0"], "name": "x", "plugins": [{}]})
    assert exc.value.code == 1
