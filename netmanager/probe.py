"""`railnet agent --probe`: readiness that means "CNI calls are served".

One real round trip through the agent's socket, the way the shim makes it: connect, send a CNI
VERSION request for the `railnet` plugin, read the reply. It passes only when the listener accepts,
a worker picks the call up, the dispatcher answers, and the answer is a well-formed CNI reply
listing the spec versions. Standard library only (plus the wire format), so the kubelet's exec
probe costs a fraction of a second, not an agent import.

With `--ready-file` it is this pod's agent that must be serving: during a rolling update the old
and the new agent share the socket path, and a call answered by the old one says nothing about the
new one. The agent writes the inode of the socket it serves to that (pod-local) file when it starts
serving; the probe passes only if the path is that socket.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from cni.spec.wire import ShimRequest, WireError, decode_reply, encode_request

PROBE_CONTAINER_ID = "railnet-readiness-probe"


class ProbeError(RuntimeError):
    pass


def round_trip(path: Path, timeout: float = 5.0) -> float:
    """Seconds one VERSION call took; ProbeError says what failed."""
    request = encode_request(ShimRequest("railnet", {"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": PROBE_CONTAINER_ID},
                                         json.dumps({"cniVersion": "1.0.0"})))
    started = time.monotonic()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        raise ProbeError(f"{path}: no reply within {timeout:.1f}s (the agent is busy or stuck)") from None
    except OSError as exc:
        raise ProbeError(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        code, body = decode_reply(b"".join(chunks))
        answer = json.loads(body) if code == 0 else None
    except (WireError, ValueError) as exc:
        raise ProbeError(f"{path}: not a CNI reply ({exc})") from None
    if not isinstance(answer, dict) or not answer.get("supportedVersions"):
        raise ProbeError(f"{path}: the agent answered VERSION with exit {code}: {body[:200]!r}")
    return time.monotonic() - started


def write_ready_file(ready_file: Path, socket_path: Path) -> None:
    """Agent side: record the socket we serve (temp + rename: a probe never reads half a file)."""
    tmp = ready_file.with_name(f".{ready_file.name}.tmp")
    tmp.write_text(f"{os.stat(socket_path).st_ino}\n")
    tmp.replace(ready_file)


def check_ours(ready_file: Path, socket_path: Path) -> None:
    """ProbeError unless the socket at the path is the one this pod's agent serves."""
    try:
        ours = int(ready_file.read_text().strip())
    except (OSError, ValueError):
        raise ProbeError(f"this agent is not serving yet ({ready_file} not written)") from None
    try:
        current = os.stat(socket_path).st_ino
    except OSError as exc:
        raise ProbeError(f"{socket_path}: {exc.strerror}") from None
    if current != ours:
        raise ProbeError(f"{socket_path} is another agent's (a takeover in progress, or handed over)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet agent --probe", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", type=Path, default=Path(os.environ.get("RAILNET_AGENT_SOCKET",
                                                                               "/run/railnet/agent.sock")))
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--ready-file", type=Path,
                        help="also require that the socket is the one this agent serves (readiness in a DaemonSet)")
    args, _ = parser.parse_known_args(argv)  # the agent's other flags may be passed along unchanged
    try:
        if args.ready_file is not None:
            check_ours(args.ready_file, args.socket)
        seconds = round_trip(args.socket, args.timeout)
    except ProbeError as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    print(f"ready: {args.socket} served a CNI call in {seconds * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
