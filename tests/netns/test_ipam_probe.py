"""The ARP conflict probe (ipam/probe.py) in real namespaces: a peer namespace on the parent NIC's segment
already holds an address of the pool; ADD through the shim skips it and quarantines it. Also measures what
the probe adds to an ADD (printed; no wall-clock assert)."""

from __future__ import annotations

import ipaddress
import sqlite3
import statistics
from typing import Any

from ipam import probe
from railnet.dev.lab import Lab, ip
from tests.netns.helpers import Env

RANGE = {"start": "10.77.0.2", "end": "10.77.0.60"}


def _squatter(lab: Lab, nic: str, address: str) -> None:
    """The veth peer of `nic`, moved into its own namespace with `address`: another host on the segment."""
    ns = lab.netns("squat")
    peer = f"{lab.prefix}nicp"[:15]
    assert nic.startswith(lab.prefix)
    ip("link", "set", peer, "netns", ns.rsplit("/", 1)[1])
    ip("-n", ns.rsplit("/", 1)[1], "addr", "add", f"{address}/24", "dev", peer)
    ip("-n", ns.rsplit("/", 1)[1], "link", "set", peer, "up")


def _conf(nic: str, pool: str) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "probe-net", "type": "railnet-ipam", "master": nic,
            "ipam": {"type": "railnet-ipam", "pool": pool}}


def test_probe_finds_the_host_using_an_address_and_nothing_else(lab: Lab) -> None:
    nic = lab.nic("nic")
    _squatter(lab, nic, "10.77.0.2")
    used, free = ipaddress.IPv4Address("10.77.0.2"), ipaddress.IPv4Address("10.77.0.3")
    assert probe.conflicts(nic, [used, free]) == {used}
    assert probe.conflicts(nic, [free]) == set()


def test_add_skips_and_quarantines_an_address_another_host_holds(lab: Lab) -> None:
    nic = lab.nic("nic")
    _squatter(lab, nic, "10.77.0.2")
    pools = {"probed": {"subnet": "10.77.0.0/24", "ranges": [RANGE], "conflictProbe": "arp"},
             "plain": {"subnet": "10.78.0.0/24", "ranges": [{"start": "10.78.0.2", "end": "10.78.0.60"}]}}
    env = Env(lab, nic, lab.agent(pools), lab.install_shim())
    first = env.call("railnet-ipam", "ADD", _conf(nic, "probed"), cid="c0", ifname="net1", netns="/proc/self/ns/net")
    assert first.ok and first.output, first
    assert first.output["ips"][0]["address"] == "10.77.0.3/24"  # .2 answered ARP: skipped
    with sqlite3.connect(env.agent.db_path) as db:
        rows = db.execute("SELECT address, container_id FROM ipam_allocation WHERE pool='probed' "
                          "ORDER BY address").fetchall()
    assert rows == [("10.77.0.2", "railnet-quarantine"), ("10.77.0.3", "c0")]
    assert "quarantined" in env.agent.log_path.read_text()
    assert env.call("railnet-ipam", "DEL", _conf(nic, "probed"), cid="c0", ifname="net1").ok

    # the cost: ADD with the probe vs the same pool shape without it, through the shim
    timings: dict[str, list[float]] = {"probed": [], "plain": []}
    for i in range(15):
        for pool in ("probed", "plain"):
            call = env.call("railnet-ipam", "ADD", _conf(nic, pool), cid=f"m{i}", ifname="net1",
                            netns="/proc/self/ns/net")
            assert call.ok, call
            timings[pool].append(call.seconds * 1e3)
    p50 = {k: statistics.median(v) for k, v in timings.items()}
    print(f"ADD p50 with the ARP probe {p50['probed']:.1f} ms, without {p50['plain']:.1f} ms "
          f"(+{p50['probed'] - p50['plain']:.1f} ms; probe window {probe.DEFAULT_WAIT * 1e3:.0f} ms)")
    for i in range(15):
        for pool in ("probed", "plain"):
            assert env.call("railnet-ipam", "DEL", _conf(nic, pool), cid=f"m{i}", ifname="net1").ok
