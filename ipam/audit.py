"""`railnet ipam audit`: the cluster-wide view of every pool, and what is wrong with it.

Reads IPPools, IPPoolBlocks, IPReservations, nodes and pods; prints per pool total / allocated /
free / blocks, then every problem. Exit status 1 on any duplicate, leak or conflict:
* duplicate: one address held twice (two allocations, or a block allocation and a reservation),
  overlapping blocks or overlapping pools;
* leaked: a block of a node that no longer exists, an address claim whose reservation is gone,
  an allocation of a pod that no longer exists, a block of a pool that no longer exists.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ipam import addrset
from ipam.crd import IPPool, IPPoolSpec
from ipam.kubeapi import ApiError, KubeApi


@dataclass
class Report:
    pools: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.duplicates or self.leaks or self.conflicts)

    @property
    def allocated(self) -> int:
        return sum(p["allocated"] for p in self.pools.values())

    def lines(self) -> list[str]:
        out = [f"{'POOL':20} {'TOTAL':>8} {'ALLOCATED':>9} {'FREE':>8} {'BLOCKS':>6} {'RESERVED':>8}"]
        for name, p in sorted(self.pools.items()):
            out.append(f"{name:20} {p['total']:>8} {p['allocated']:>9} {p['total'] - p['allocated']:>8} "
                       f"{p['blocks']:>6} {p['reserved']:>8}")
        for kind, items in (("duplicate", self.duplicates), ("leaked", self.leaks), ("conflict", self.conflicts)):
            out += [f"{kind}: {item}" for item in items]
        out.append("clean" if self.clean else
                   f"{len(self.duplicates)} duplicates, {len(self.leaks)} leaks, {len(self.conflicts)} conflicts")
        return out


def audit(api: KubeApi, check_pods: bool = True) -> Report:
    rep = Report()
    pools: dict[str, IPPoolSpec] = {}
    for obj in api.list_pools().get("items", []):
        try:
            pools[obj["metadata"]["name"]] = IPPool.model_validate(obj).spec
        except ValidationError as exc:
            rep.conflicts.append(f"IPPool {obj['metadata']['name']} is invalid: {exc.errors()[0]['msg']}")
    names = sorted(pools)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if addrset.overlaps(pools[a], pools[b]):
                rep.duplicates.append(f"pools {a} ({pools[a].subnet}) and {b} ({pools[b].subnet}) overlap")
    blocks = api.list_blocks()
    reservations = {f"{r['metadata']['namespace']}/{r['metadata']['name']}": r for r in api.list_reservations()}
    nodes = api.list_node_names()
    pods = api.list_pod_keys() if check_pods else set()
    for name, spec in pools.items():
        rep.pools[name] = {"total": addrset.allocatable(spec).size, "allocated": 0, "blocks": 0, "reserved": 0}
    holders: dict[str, list[str]] = defaultdict(list)
    # node blocks and fixed-IP claims apart: a node block spans the fixed ranges but never hands them out
    nets: dict[bool, list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]] = {False: [], True: []}
    for blk in blocks:
        bname, spec_b = blk["metadata"]["name"], blk.get("spec", {})
        pool, node, res = spec_b.get("pool", ""), spec_b.get("node", ""), spec_b.get("reservation")
        net = ipaddress.ip_network(spec_b["cidr"])
        nets[bool(res)].append((net, bname))
        if pool not in pools:
            rep.leaks.append(f"block {bname} belongs to pool {pool!r}, which does not exist")
        elif not net.subnet_of(ipaddress.ip_network(pools[pool].subnet)):  # type: ignore[arg-type]
            rep.conflicts.append(f"block {bname} ({net}) is outside pool {pool} ({pools[pool].subnet})")
        stats = rep.pools.get(pool)
        if res:
            if pool in pools and str(net.network_address) not in addrset.fixed(pools[pool]):
                rep.conflicts.append(f"address claim {bname} ({net}) is outside the fixedRanges of pool {pool}")
            if res not in reservations:
                rep.leaks.append(f"address claim {bname} belongs to reservation {res}, which does not exist")
            if stats:
                stats["reserved"] += 1
        else:
            if node not in nodes:
                rep.leaks.append(f"block {bname} belongs to node {node!r}, which does not exist")
            if stats:
                stats["blocks"] += 1
        for a in (blk.get("status") or {}).get("allocations") or []:
            where = f"{bname} ({a.get('containerId')}/{a.get('ifname')})"
            if ipaddress.ip_address(a["address"]) not in net:
                rep.conflicts.append(f"{a['address']} is published in block {bname} but lies outside it")
            holders[a["address"]].append(where)
            if check_pods and a.get("pod") and a["pod"] not in pods:
                rep.leaks.append(f"{a['address']} in {bname} is held for pod {a['pod']}, which does not exist")
            if stats:
                stats["allocated"] += 1
    for address, who in holders.items():
        if len(who) > 1:
            rep.duplicates.append(f"{address} is held {len(who)} times: {', '.join(who)}")
    for group in nets.values():
        group.sort(key=lambda x: (x[0].version, int(x[0].network_address)))
        for (n1, b1), (n2, b2) in zip(group, group[1:], strict=False):
            if n1.version == n2.version and n1.overlaps(n2):
                rep.duplicates.append(f"blocks {b1} ({n1}) and {b2} ({n2}) overlap")
    return rep


def publish_pool_status(api: KubeApi, rep: Report) -> None:
    for name, p in rep.pools.items():
        api.patch_pool_status(name, {"capacity": p["total"], "allocations": p["allocated"],
                                     "free": p["total"] - p["allocated"], "blocks": p["blocks"],
                                     "reserved": p["reserved"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet ipam audit", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG") or None)
    parser.add_argument("--no-pods", action="store_true", help="do not check that allocations' pods exist")
    args = parser.parse_args(argv)
    if args.kubeconfig is None:
        print("railnet ipam audit: give --kubeconfig (or KUBECONFIG)", file=sys.stderr)
        return 2
    api = KubeApi(args.kubeconfig)
    try:
        rep = audit(api, check_pods=not args.no_pods)
    except ApiError as exc:
        print(f"railnet ipam audit: {exc}", file=sys.stderr)
        return 2
    finally:
        api.close()
    print("\n".join(rep.lines()))
    return 0 if rep.clean else 1


