"""`railnet install-cni`: put the plugin files into the CNI bin dir (what the DaemonSet runs).

Two builds of the same shim exist: the native one (native/shim.c, compiled by the package build,
setup.py, when a C compiler is there) starts in well under a millisecond; the stdlib Python one
runs anywhere Python does. `auto` takes the native build when it has been compiled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

# Exactly the plugins the agent serves: keep equal to cni.dispatch.SERVED_PLUGINS (a unit test
# checks; importing cni.dispatch here would slow `railnet install-cni` down).
PLUGIN_NAMES = ("railnet", "railnet-macvlan", "railnet-sriov", "railnet-ipam")
NATIVE_SHIM = Path(__file__).with_name("native") / "railnet-shim"
PYTHON_SHIM = Path(__file__).with_name("shim.py")


def choose(kind: str) -> str:
    if kind == "auto":
        return "native" if NATIVE_SHIM.is_file() else "python"
    if kind == "native" and not NATIVE_SHIM.is_file():
        raise FileNotFoundError(f"native shim not built: {NATIVE_SHIM} is missing; reinstall railnet "
                                "with a C compiler present (or run `make`)")
    return kind


def install(dest: Path, kind: str = "auto", interpreter: str | None = None) -> list[Path]:
    """Write the shim once per plugin name, atomically (a runtime may exec it at any moment)."""
    kind = choose(kind)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLUGIN_NAMES:
        target = dest / name
        tmp = dest / f".{name}.tmp{os.getpid()}"
        try:
            if kind == "native":
                shutil.copyfile(NATIVE_SHIM, tmp)
            else:
                python = interpreter or os.path.realpath(sys.executable)
                # -I: ignore PYTHON* env and user site; -S: skip site.py. Both shave start-up time.
                tmp.write_text(f"#!{python} -IS\n{PYTHON_SHIM.read_text()}")
            tmp.chmod(0o755)
            tmp.replace(target)  # rename: a runtime execs the old file or the new one, never half of one
        finally:
            tmp.unlink(missing_ok=True)
        written.append(target)
    return written


AGENT_SOCKET_DIR = "/run/railnet/"  # the only place the shim follows an agentSocket to


def uninstall(dest: Path, conf_dir: Path | None) -> list[str]:
    """Conflist first (the runtime stops calling railnet), then the plugin files; the primary's file
    was never touched, so the node is as before install. Returns what was removed."""
    removed = []
    if conf_dir is not None:
        from cni.meta import netconf

        if netconf.remove(conf_dir):
            removed.append(str(conf_dir / netconf.META_FILE))
    for name in PLUGIN_NAMES:
        path = dest / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(str(path))
    return removed


def _check_socket(path: str) -> str:
    if not path.startswith(AGENT_SOCKET_DIR) or ".." in Path(path).parts or "\0" in path:
        raise ValueError(f"--agent-socket {path!r} must be a path below {AGENT_SOCKET_DIR} (the shim follows "
                         "no other)")
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="railnet install-cni", description=__doc__)
    parser.add_argument("--dest", type=Path, default=Path("/opt/cni/bin"), help="CNI bin dir (default %(default)s)")
    parser.add_argument("--shim", choices=("auto", "native", "python"), default="auto",
                        help="which build of the shim to install (default %(default)s)")
    parser.add_argument("--python", help="interpreter for the Python shim (default: this one)")
    parser.add_argument("--conf-dir", type=Path,
                        help="also write the railnet meta plugin's conflist here, wrapping the node's primary network")
    parser.add_argument("--primary-conflist", metavar="FILE",
                        help="with --conf-dir: the primary network's file in the conf dir (default: the first "
                             "valid config there); missing or invalid fails the install and changes nothing")
    parser.add_argument("--agent-socket", metavar="PATH",
                        help="the agent's socket for the conflist (agentSocket; must be below /run/railnet/)")
    parser.add_argument("--uninstall", action="store_true",
                        help="remove what install-cni wrote (plugin files, and the conflist with --conf-dir)")
    args = parser.parse_args(argv)

    if args.uninstall:
        for removed in uninstall(args.dest, args.conf_dir):
            print(f"removed {removed}")
        return 0
    try:
        options = {"agentSocket": _check_socket(args.agent_socket)} if args.agent_socket else {}
        if args.conf_dir:  # check everything before writing anything: a refused install changes nothing
            from cni.meta import netconf  # only for the conflist: keeps the plain install import-light

            netconf.check(args.conf_dir, args.primary_conflist)
        elif args.primary_conflist:
            raise ValueError("--primary-conflist needs --conf-dir")
        paths = install(args.dest, args.shim, args.python)
        if args.conf_dir:
            paths.append(netconf.write(args.conf_dir, args.primary_conflist, **options))
    except (OSError, ValueError) as exc:  # netconf.ConfError is a ValueError
        print(f"railnet install-cni: error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"installed {path}")
    return 0
