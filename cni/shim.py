"""The railnet CNI binary: forwards one CNI call to the node agent and prints its answer.

Imports only the standard library and is started with `python -I -S`: its start-up is the
floor of every pod's network setup. VERSION is answered locally so a runtime can probe the
plugin while the agent is down.
"""

import errno
import json
import os
import socket
import sys
import time

DEFAULT_SOCKET = "/run/railnet/agent.sock"
SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]  # keep equal to cni.versions.SUPPORTED
TRY_AGAIN_LATER = 11
DECODE_FAILURE = 6
INCOMPATIBLE_VERSION = 1


def _fail(code: int, msg: str, details: str, version: str = "1.1.0") -> int:
    sys.stdout.write(json.dumps({"cniVersion": version, "code": code, "msg": msg, "details": details}))
    return 1


def _socket_path(config: dict) -> str:  # type: ignore[type-arg]
    return str(os.environ.get("RAILNET_AGENT_SOCKET") or config.get("agentSocket") or DEFAULT_SOCKET)


def _connect(sock: socket.socket, path: str) -> None:
    """EAGAIN means the agent's accept queue is full (a burst): wait briefly, don't fail the pod."""
    for delay in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
        try:
            sock.connect(path)
            return
        except BlockingIOError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            time.sleep(delay)
    sock.connect(path)


def main() -> int:
    stdin = sys.stdin.read()
    try:
        config = json.loads(stdin) if stdin.strip() else {}
    except ValueError as exc:
        return _fail(DECODE_FAILURE, "network config is not valid JSON", str(exc))
    if not isinstance(config, dict):
        return _fail(DECODE_FAILURE, "network config must be a JSON object", type(config).__name__)
    version = str(config["cniVersion"]) if config.get("cniVersion") in SUPPORTED else "1.1.0"
    if os.environ.get("CNI_COMMAND") == "VERSION":
        if config.get("cniVersion") and config["cniVersion"] not in SUPPORTED:
            return _fail(INCOMPATIBLE_VERSION, f"unsupported cniVersion {config['cniVersion']!r}",
                         "railnet supports " + ", ".join(SUPPORTED))
        sys.stdout.write(json.dumps({"cniVersion": version, "supportedVersions": SUPPORTED}))
        return 0
    request = {
        "plugin": os.path.basename(sys.argv[0]),
        "env": {k: v for k, v in os.environ.items() if k.startswith("CNI_")},
        "stdin": stdin,
    }
    path = _socket_path(config)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(float(os.environ.get("RAILNET_AGENT_TIMEOUT", "120")))
            _connect(sock, path)
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        reply = json.loads(b"".join(chunks))
    except (OSError, ValueError) as exc:
        return _fail(TRY_AGAIN_LATER, f"railnet agent is not reachable at {path}",
                     f"{exc}; is the railnet-agent DaemonSet running on this node?", version)
    sys.stdout.write(reply.get("stdout", ""))
    if reply.get("stderr"):
        sys.stderr.write(reply["stderr"])
    return int(reply.get("code", 1))


if __name__ == "__main__":
    sys.exit(main())
