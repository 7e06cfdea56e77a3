"""`railnet topo`: show this node's GPU/NIC topology (or a built-in fixture's).

    railnet topo [--sysfs DIR] [--nvidia-smi-topo FILE] [--json] [--fixture NAME]

Exit status 0 on success, 1 on bad input (one-line error naming the path), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from railnet.dev.fixture_servers import FIXTURES
from railnet.dev.fixtures import build_fixture, nvidia_smi_topo

from .discover import discover
from .model import NodeTopology
from .render import render
from .sysfs import TopologyError

PROG = "railnet topo"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse already printed usage; return instead of exiting
        return int(exc.code or 0)
    try:
        topology = _topology(args)
    except TopologyError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(topology.model_dump_json(by_alias=True, indent=2) if args.json else render(topology).rstrip("\n"))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Show GPU-GPU and GPU-NIC topology tiers of a node.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--sysfs", metavar="DIR", default="/sys", help="sysfs root to read (default: /sys)")
    source.add_argument(
        "--fixture", choices=sorted(FIXTURES), help="build a fake server in a temp dir and show it (no GPUs needed)"
    )
    parser.add_argument("--nvidia-smi-topo", metavar="FILE", help="text of `nvidia-smi topo -m`, adds NVLink")
    parser.add_argument("--json", action="store_true", help="print the NodeTopology as JSON (CRD field names)")
    parser.add_argument("--node-name", help="node name to report (default: $NODE_NAME or the hostname)")
    return parser


def _topology(args: argparse.Namespace) -> NodeTopology:
    smi_text = _read_smi(args.nvidia_smi_topo) if args.nvidia_smi_topo else None
    if args.fixture is None:
        return discover(args.sysfs, smi_text, args.node_name, args.nvidia_smi_topo or "nvidia-smi topo -m")
    with tempfile.TemporaryDirectory(prefix=f"railnet-{args.fixture}-") as root:
        built = build_fixture(args.fixture, root)
        source = args.nvidia_smi_topo or "generated nvidia-smi topo -m"
        if smi_text is None and built.server.nvlinks:
            smi_text = nvidia_smi_topo(built)  # the fixture's own matrix, so NVLink shows up too
        return discover(root, smi_text, args.node_name or args.fixture, source)


def _read_smi(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise TopologyError(f"cannot read {path}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    sys.exit(main())
