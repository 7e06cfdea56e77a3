"""`railnet ipam audit|controller`: the cluster IPAM's commands (the agent side runs in `railnet agent`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("audit", "controller"):
        print("usage: railnet ipam audit [--kubeconfig K] [--no-pods]\n"
              "       railnet ipam controller [--kubeconfig K] [--interval S]", file=sys.stderr)
        return 2
    if args[0] == "audit":
        from ipam.audit import main as audit_main
        return int(audit_main(args[1:]))
    from ipam.controller import main as controller_main
    return int(controller_main(args[1:]))
