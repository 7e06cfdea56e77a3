"""The railnet CNI binary (portable Python build): forwards one CNI call to the node agent.

Started as `python -I -S`, and on the hot path it imports only the C module `_socket`: the
shim's start-up is the floor of every pod's network setup. The native build (native/shim.c)
behaves identically byte for byte; `tests/netns/test_shims.py` holds the two to that.
Only when the agent is unreachable does the shim answer by itself: VERSION locally, anything
else with CNI error 11 ("try again later") naming the socket.
"""

import _socket
import os
import sys
import time

DEFAULT_SOCKET = "/run/railnet/agent.sock"
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")  # keep equal to cni.spec.versions.SUPPORTED
RETRY_DELAYS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)  # EAGAIN: the agent's accept queue is full


def string_field(config: bytes, key: str) -> str | None:
    """The string value of a top-level-looking `"key": "value"` without a JSON parser."""
    at = config.find(b'"' + key.encode() + b'"')
    if at < 0:
        return None
    i = at + len(key) + 2
    while i < len(config) and config[i] in b" \t\r\n:":
        i += 1
    if i >= len(config) or config[i] != ord('"'):
        return None
    out = bytearray()
    i += 1
    while i < len(config) and config[i] != ord('"'):
        if config[i] == ord("\\") and i + 1 < len(config):
            i += 1
        out.append(config[i])
        i += 1
    return out.decode(errors="replace")


def escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def fail(version: str, code: int, msg: str, details: str) -> int:
    sys.stdout.write(f'{{"cniVersion":"{escape(version)}","code":{code},'
                     f'"msg":"{escape(msg)}","details":"{escape(details)}"}}')
    return 1


def answer_version(version: str, asked: str | None) -> int:
    if asked is not None and asked not in SUPPORTED:
        return fail("1.1.0", 1, f"unsupported cniVersion \"{asked}\"", "railnet supports " + ", ".join(SUPPORTED))
    versions = '","'.join(SUPPORTED)
    sys.stdout.write(f'{{"cniVersion":"{version}","supportedVersions":["{versions}"]}}')
    return 0


def call_agent(path: str, request: bytes) -> bytes:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(float(os.environ.get("RAILNET_AGENT_TIMEOUT") or 120))
        for delay in RETRY_DELAYS:
            try:
                sock.connect(path)
                break
            except BlockingIOError:
                time.sleep(delay)
        else:
            sock.connect(path)
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        sock.close()


def main() -> int:
    config = sys.stdin.buffer.read()
    asked = string_field(config, "cniVersion")
    version = asked if asked in SUPPORTED else "1.1.0"
    path = os.environ.get("RAILNET_AGENT_SOCKET") or string_field(config, "agentSocket") or DEFAULT_SOCKET
    env = b"".join(f"{k}={v}".encode() + b"\0" for k, v in os.environ.items() if k.startswith("CNI_"))
    request = b"RAILNET1 " + os.path.basename(sys.argv[0]).encode() + b"\n" + env + b"\0" + config
    try:
        reply = call_agent(path, request)
        head, newline, body = reply.partition(b"\n")
        code = int(head) if newline else None
    except OSError as exc:  # a timeout carries no errno: name it as the C library does
        code, body = None, os.strerror(exc.errno or 110).encode()
    except ValueError:
        code, body = None, b"malformed reply"
    if code is None:
        if os.environ.get("CNI_COMMAND") == "VERSION":
            return answer_version(version, asked)
        reason = body.decode(errors="replace") if body else "malformed reply"
        return fail(version, 11, "railnet agent is not reachable at " + path,
                    reason + "; is the railnet-agent DaemonSet running on this node?")
    sys.stdout.buffer.write(body)
    return code


if __name__ == "__main__":
    sys.exit(main())
