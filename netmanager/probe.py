"""`railnet agent --probe`: readiness that means "CNI calls are served".

One real round trip through the agent's socket, the way the shim makes it: connect, send a CNI
VERSION request for the `railnet` plugin, read the reply. It passes only when the listener accepts,
a worker picks the call up, the dispatcher answers, and the answer is a well-formed CNI reply
listing the spec versions. Standard library only (plus the wire format), so the kubelet's exec
probe costs a fraction of a second, not an agent import.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet agent --probe", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", type=Path, default=Path(os.environ.get("RAILNET_AGENT_SOCKET",
                                                                               "/run/railnet/agent.sock")))
    parser.add_argument("--timeout", type=float, default=5.0)
    args, _ = parser.parse_known_args(argv)  # the agent's other flags may be passed along unchanged
    try:
        seconds = round_trip(args.socket, args.timeout)
    except ProbeError as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    print(f"ready: {args.socket} served a CNI call in {seconds * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
