"""The IPAM controller: frees what agents cannot free themselves, and keeps IPPool statuses current.

* A block whose node is gone: released only after a GET of the node answers 404 (a node that is
  NotReady or unreachable keeps its blocks: its agent may still hold addresses there).
* A fixed-IP claim whose IPReservation is gone (the garbage collector deleted it with its owner).
* IPPool status: total / allocated / free / blocks / reserved, from the blocks' published statuses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from ipam.audit import audit, publish_pool_status
from ipam.kubeapi import ApiError, KubeApi

log = logging.getLogger("railnet.ipam.controller")


def reconcile_once(api: KubeApi) -> list[str]:
    """One pass; returns the names of the blocks it released."""
    released: list[str] = []
    nodes = api.list_node_names()
    reservations = {f"{r['metadata']['namespace']}/{r['metadata']['name']}" for r in api.list_reservations()}
    for blk in api.list_blocks():
        name, spec = blk["metadata"]["name"], blk.get("spec", {})
        res, node = spec.get("reservation"), spec.get("node", "")
        if res:
            if res in reservations:
                continue
        else:
            if node in nodes:
                continue
            try:
                api.get_node(node)
                continue  # listed late, but there: keep
            except ApiError as exc:
                if exc.status != 404:
                    raise
        try:
            api.delete_block(name, uid=blk["metadata"]["uid"])
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
        released.append(name)
        log.info("released block %s (%s)", name, f"reservation {res} is gone" if res else f"node {node} is gone")
    publish_pool_status(api, audit(api, check_pods=False))
    return released


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet ipam controller", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG") or None)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    if args.kubeconfig is None:
        print("railnet ipam controller: give --kubeconfig (or KUBECONFIG)", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO")
    api = KubeApi(args.kubeconfig)
    while True:
        try:
            reconcile_once(api)
        except ApiError as exc:
            log.warning("reconcile failed: %s", exc)
        if args.once:
            return 0
        time.sleep(args.interval)
