"""The `railnet` command: one entry point, each subcommand owned by its package.

Subcommand modules are imported lazily so `railnet install-cni` stays quick.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "agent": ("netmanager.agent", "run the node agent that serves the CNI shim"),
    "install-cni": ("cni.install", "install the CNI plugin files into a CNI bin dir"),
    "demo": ("railnet.dev.demo", "build a local lab and attach RoCE interfaces end to end"),
    "ipam": ("ipam.cli", "cluster IPAM: audit the IPPools (duplicates, leaks), run the IPAM controller"),
    "topo": ("netmanager.topology.cli", "show this node's GPU/NIC/PCIe/NUMA topology"),
    "simulate": ("scheduler.simulate", "replay a cluster trace through the scheduler"),
    "scheduler": ("scheduler.live.loop", "schedule pods (schedulerName railnet) on the API server: GPUs + RDMA NICs, gangs"),
    "controller": ("jobs.controller", "reconcile TFJobs/PyTorchJobs (KubeDL + Kubeflow APIs): pods, Services, host ports"),
    "dev-cluster": ("railnet.dev.devcluster", "run a local Kubernetes control plane (up|down|status)"),
    "cluster-demo": ("railnet.dev.cluster_demo", "the whole system on the dev cluster: chart, jobs, rails, teardown"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: railnet COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"railnet: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
