"""The shim <-> agent wire format, kept trivial so a shim needs no JSON or socket library.

    request:  b"RAILNET1 <plugin>\\n" + b"KEY=VALUE\\0" * n + b"\\0" + <network config bytes>
    reply:    b"<exit code>\\n" + <bytes for the runtime's stdout>

The shim half-closes its side after the request; the agent closes after the reply.
"""

from __future__ import annotations

from dataclasses import dataclass

MAGIC = b"RAILNET1 "


class WireError(ValueError):
    pass


@dataclass
class ShimRequest:
    plugin: str
    env: dict[str, str]
    stdin: str


def encode_request(req: ShimRequest) -> bytes:
    env = b"".join(f"{k}={v}".encode() + b"\0" for k, v in req.env.items())
    return MAGIC + req.plugin.encode() + b"\n" + env + b"\0" + req.stdin.encode()


def decode_request(data: bytes) -> ShimRequest:
    if not data.startswith(MAGIC):
        raise WireError("not a railnet shim request (bad magic)")
    header, newline, rest = data.partition(b"\n")
    if not newline:
        raise WireError("truncated request header")
    env: dict[str, str] = {}
    while True:
        entry, nul, rest = rest.partition(b"\0")
        if not nul:
            raise WireError("truncated environment block")
        if not entry:
            break
        key, _, value = entry.decode(errors="replace").partition("=")
        env[key] = value
    return ShimRequest(header[len(MAGIC):].decode(errors="replace"), env, rest.decode(errors="replace"))


def encode_reply(code: int, stdout: str) -> bytes:
    return f"{code}\n".encode() + stdout.encode()


def decode_reply(data: bytes) -> tuple[int, bytes]:
    head, newline, body = data.partition(b"\n")
    if not newline or not head.strip().lstrip(b"-").isdigit():
        raise WireError("malformed reply from the agent")
    return int(head), body
