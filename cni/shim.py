"""The railnet CNI binary (portable Python build): forwards one CNI call to the node agent.

Started as `python -I -S`, it imports nothing that the interpreter has not already loaded at
start-up (`sys`, `posix`, `time` are built in) except the C extension `_socket`: the shim's
start-up is the floor of every pod's network setup. It works on bytes throughout, so any input
gives the same bytes out as the native build (native/shim.c); `tests/unit/test_shim_parity.py`
and `tests/netns/test_shims.py` hold the two to that.
Only when the agent is unreachable does the shim answer by itself: VERSION locally, anything
else with CNI error 11 ("try again later") naming the socket.
"""

import _socket
import posix
import sys
import time

DEFAULT_SOCKET = b"/run/railnet/agent.sock"
SOCKET_DIR = b"/run/railnet/"  # the config key agentSocket may only point below this
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")  # keep equal to cni.spec.versions.SUPPORTED
RETRY_DELAYS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)  # EAGAIN: the agent's accept queue is full
DEFAULT_TIMEOUT = 120.0  # seconds for the whole call; RAILNET_AGENT_TIMEOUT overrides
MAX_TIMEOUT = 86400.0
SUN_PATH = 108  # sizeof(sockaddr_un.sun_path) on Linux: a path needs one byte less
ENAMETOOLONG, ETIMEDOUT = 36, 110
ESCAPES = {ord('"'): 0x22, ord("\\"): 0x5C, ord("/"): 0x2F, ord("b"): 8, ord("f"): 12, ord("n"): 10,
           ord("r"): 13, ord("t"): 9}
WHITESPACE = b" \t\r\n"
DIGITS = b"0123456789"
HINT = b"; is the railnet-agent DaemonSet running on this node?"


class Malformed(Exception):
    pass


def string_end(config: bytes, i: int) -> int:
    """The index of the quote closing the JSON string whose opening quote is at i, or -1."""
    while True:
        i = config.find(b'"', i + 1)
        if i < 0:
            return -1
        k = i - 1
        while config[k] == 0x5C:
            k -= 1
        if (i - 1 - k) % 2 == 0:  # an even run of backslashes escapes only itself
            return i


def hex4(raw: bytes, i: int) -> int:
    digits = raw[i:i + 4]
    if len(digits) != 4 or digits.strip(b"0123456789abcdefABCDEF"):
        raise Malformed
    return int(digits, 16)


def unescape(raw: bytes) -> bytes:
    """A JSON string's content (between the quotes) as UTF-8 bytes; lone surrogates become U+FFFD."""
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x5C:
            out.append(c)
            i += 1
            continue
        e = raw[i + 1]
        if e in ESCAPES:
            out.append(ESCAPES[e])
            i += 2
            continue
        if e != ord("u"):
            raise Malformed
        cp = hex4(raw, i + 2)
        i += 6
        if 0xD800 <= cp < 0xDC00 and raw[i:i + 2] == b"\\u":
            low = hex4(raw, i + 2)
            if 0xDC00 <= low < 0xE000:
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                i += 6
        if 0xD800 <= cp < 0xE000:
            cp = 0xFFFD
        if cp < 0x80:
            out.append(cp)
        elif cp < 0x800:
            out += bytes((0xC0 | cp >> 6, 0x80 | cp & 0x3F))
        elif cp < 0x10000:
            out += bytes((0xE0 | cp >> 12, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F))
        else:
            out += bytes((0xF0 | cp >> 18, 0x80 | cp >> 12 & 0x3F, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F))
    return bytes(out)


def top_level(config: bytes, wanted: tuple[bytes, ...]) -> dict[bytes, bytes]:
    """The string values of the `wanted` keys of the top-level JSON object, without a JSON parser.

    Keys inside nested objects and arrays are never read. The last occurrence of a key wins, as
    in JSON parsers; a non-string value unsets it. A config that is not one closed object, or
    whose top-level keys or wanted values hold a bad escape, yields nothing.
    """
    found: dict[bytes, bytes] = {}
    n = len(config)
    i = 0
    while i < n and config[i] in WHITESPACE:
        i += 1
    if i == n or config[i] != 0x7B:
        return {}
    depth, state, key, i = 1, "key", b"", i + 1
    try:
        while True:
            q = config.find(b'"', i)
            if q < 0:
                q = n
            closes = config.count(b"}", i, q) + config.count(b"]", i, q)
            if depth - closes > 1:  # stays nested up to the next string: count, don't walk
                depth += config.count(b"{", i, q) + config.count(b"[", i, q) - closes
            else:
                for c in config[i:q]:
                    if depth == 1 and c not in WHITESPACE:
                        if c == 0x3A and state == "colon":
                            state = "value"
                        elif c == 0x2C:
                            state = "key"
                        else:
                            if state == "value":
                                found.pop(key, None)
                            state = "other"
                    if c in b"{[":
                        depth += 1
                    elif c in b"}]":
                        depth -= 1
                        if depth == 0:
                            return found
            if q == n:
                return {}  # the object never closes
            end = string_end(config, q)
            if end < 0:
                return {}
            if depth == 1:
                if state == "key":
                    key, state = unescape(config[q + 1:end]), "colon"
                elif state == "value":
                    if key in wanted:
                        found[key] = unescape(config[q + 1:end])
                    state = "other"
                else:
                    state = "other"
            i = end + 1
    except (Malformed, IndexError):
        return {}


def socket_path(config_value: bytes | None) -> bytes:
    env = posix.environ.get(b"RAILNET_AGENT_SOCKET")
    if env:
        return env
    if (config_value and config_value.startswith(SOCKET_DIR) and len(config_value) > len(SOCKET_DIR)
            and b"\0" not in config_value and b".." not in config_value.split(b"/")):
        return config_value
    return DEFAULT_SOCKET


def timeout() -> float:
    """RAILNET_AGENT_TIMEOUT in seconds (digits with at most one point, > 0); else the default."""
    raw = posix.environ.get(b"RAILNET_AGENT_TIMEOUT", b"")
    digits = raw.replace(b".", b"", 1)
    if not digits or digits.strip(DIGITS):
        return DEFAULT_TIMEOUT
    seconds = float(raw)
    return seconds if 0 < seconds <= MAX_TIMEOUT else DEFAULT_TIMEOUT


def escape(text: bytes) -> bytes:
    out = bytearray()
    for c in text:
        if c == 0x22 or c == 0x5C:
            out += b"\\%c" % c
        elif c < 0x20:
            out += b"\\u%04x" % c
        else:
            out.append(c)
    return bytes(out)


def fail(version: bytes, code: int, msg: bytes, details: bytes) -> int:
    sys.stdout.buffer.write(b'{"cniVersion":"%s","code":%d,"msg":"%s","details":"%s"}'
                            % (escape(version), code, escape(msg), escape(details)))
    return 1


def answer_version(version: bytes, asked: bytes | None) -> int:
    if asked is not None and asked.decode("latin-1") not in SUPPORTED:
        return fail(b"1.1.0", 1, b'unsupported cniVersion "%s"' % asked,
                    b"railnet supports " + ", ".join(SUPPORTED).encode())
    versions = '","'.join(SUPPORTED).encode()
    sys.stdout.buffer.write(b'{"cniVersion":"%s","supportedVersions":["%s"]}' % (version, versions))
    return 0


def call_agent(path: bytes, request: bytes, deadline: float) -> bytes:
    """The agent's reply; OSError on failure (errno None for a timeout)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.setblocking(False)  # a full accept queue answers EAGAIN instead of blocking
        for delay in RETRY_DELAYS + (0.0,):
            try:
                sock.connect(path)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if not delay or left <= 0:
                    raise
                time.sleep(min(delay, left))
        chunks: list[bytes] = []
        left = deadline - time.monotonic()
        if left > 0:
            sock.settimeout(left)
            sock.sendall(request)
            sock.shutdown(_socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        raise OSError(ETIMEDOUT, "")
    finally:
        sock.close()


def main() -> int:
    config = sys.stdin.buffer.read()
    fields = top_level(config, (b"cniVersion", b"agentSocket"))
    asked = fields.get(b"cniVersion")
    version = asked if asked is not None and asked.decode("latin-1") in SUPPORTED else b"1.1.0"
    path = socket_path(fields.get(b"agentSocket"))
    env = b"".join(b"%s=%s\0" % item for item in posix.environ.items() if item[0].startswith(b"CNI_"))
    plugin = sys.argv[0].rpartition("/")[2].encode(errors="surrogateescape")
    request = b"RAILNET1 " + plugin + b"\n" + env + b"\0" + config
    if len(path) >= SUN_PATH:
        reply, details = b"", b"the socket path is longer than %d bytes" % (SUN_PATH - 1)
    else:
        try:
            reply, details = call_agent(path, request, time.monotonic() + timeout()), b""
        except OSError as exc:  # a timeout carries no errno: name it as the C library does
            reply, details = b"", posix.strerror(exc.errno or ETIMEDOUT).encode() + HINT
    head, newline, body = reply.partition(b"\n")
    if newline and 0 < len(head) <= 3 and not head.strip(DIGITS) and int(head) <= 255:
        sys.stdout.buffer.write(body)
        return int(head)
    if posix.environ.get(b"CNI_COMMAND") == b"VERSION":
        return answer_version(version, asked)
    if details:
        return fail(version, 11, b"railnet agent is not reachable at " + path, details)
    return fail(version, 11, b"malformed reply from the railnet agent at " + path,
                b"the reply does not start with an exit code line (0-255)")


if __name__ == "__main__":
    sys.exit(main())
