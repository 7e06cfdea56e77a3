"""`railnet install-cni`: put the plugin files into the CNI bin dir (what the DaemonSet runs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PLUGIN_NAMES = ("railnet", "railnet-macvlan", "railnet-ipam")


def install(dest: Path, interpreter: str | None = None) -> list[Path]:
    """Write the shim once per plugin name, atomically (a runtime may exec it at any moment)."""
    python = interpreter or os.path.realpath(sys.executable)
    source = (Path(__file__).with_name("shim.py")).read_text()
    # -I: ignore PYTHON* env and user site; -S: skip site.py. Both shave start-up time.
    body = f"#!{python} -IS\n{source}"
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLUGIN_NAMES:
        target = dest / name
        tmp = dest / f".{name}.tmp{os.getpid()}"
        tmp.write_text(body)
        tmp.chmod(0o755)
        tmp.replace(target)
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="railnet install-cni", description=__doc__)
    parser.add_argument("--dest", type=Path, default=Path("/opt/cni/bin"), help="CNI bin dir (default %(default)s)")
    parser.add_argument("--python", help="interpreter for the shim (default: this one)")
    args = parser.parse_args(argv)
    for path in install(args.dest, args.python):
        print(f"installed {path}")
    return 0
