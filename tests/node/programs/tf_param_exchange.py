"""A parameter-server exchange over the addresses TF_CONFIG gives; Python standard library only.

Runs in every replica of a TFJob (test image `railnet.local/testbox`, mounted from a ConfigMap):

* ``ps``: listens on the port of its own TF_CONFIG entry (its host port in host-network mode) and
  applies the workers' pushes to a parameter vector, each (worker, round) once. A worker that
  (re)connects is told the first round it has not pushed yet, so a replacement resumes where the
  killed one stopped. When a worker reports done, the PS reaches it back through the address
  TF_CONFIG gives for it (its Service) and checks it answers as the incarnation that reported. When
  every worker is done it prints ``RESULT <json>`` and exits 0 if every round of every worker was
  applied and the parameters equal the sum of all pushes, else 3.
* ``worker``: serves pings on its own TF_CONFIG port (as a TensorFlow server would), connects to the
  PS through its TF_CONFIG address, pushes ``ROUNDS`` gradients (``ROUND_PAUSE`` seconds apart),
  checks every reply, reports done and exits 0 once the PS acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import socketserver
import sys
import threading
import time
from typing import Any, BinaryIO

ROUNDS = int(os.environ.get("ROUNDS", "30"))
PAUSE = float(os.environ.get("ROUND_PAUSE", "0.3"))
DIM = 4
CONNECT_S = 120.0


_OUT = threading.Lock()


def say(*parts: object) -> None:
    """One whole line per call: handler threads print concurrently, and print() writes the newline apart."""
    with _OUT:
        sys.stdout.write(" ".join(map(str, parts)) + "\n")
        sys.stdout.flush()


def grad(worker: int, rnd: int) -> list[int]:
    return [(worker + 1) * 1000 + rnd * 10 + k for k in range(DIM)]


def split(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def send(f: BinaryIO, obj: Any) -> None:
    f.write(json.dumps(obj).encode() + b"\n")
    f.flush()


def recv(f: BinaryIO) -> Any:
    line = f.readline()
    if not line:
        raise ConnectionError("peer closed the connection")
    return json.loads(line)


def connect(addr: str, deadline: float) -> socket.socket:
    host, port = split(addr)
    while True:
        try:
            return socket.create_connection((host, port), timeout=10)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"cannot reach {addr}: {exc}") from None
            time.sleep(0.3)


def connect_ps(addr: str, deadline: float) -> tuple[socket.socket, BinaryIO]:
    """Connect to the PS and read its banner; anything else on the other end is not the PS (yet).

    A Service's ClusterIP reaches its endpoint only once kube-proxy has written the rules for it; a
    connection made before that goes wherever the host routes the address (gRPC's handshake fails
    it the same way), so a missing or wrong banner means: close and try again."""
    while True:
        s = connect(addr, deadline)
        s.settimeout(5)
        f = s.makefile("rwb")
        line, banner = b"", None
        with contextlib.suppress(OSError, ValueError):
            line = f.readline()
            banner = json.loads(line)
        if isinstance(banner, dict) and banner.get("banner") == "ps":
            s.settimeout(CONNECT_S + 30)
            return s, f
        say(f"{addr} is not the ps yet (answered {line[:60]!r}); retrying")
        s.close()
        if time.monotonic() > deadline:
            raise ConnectionError(f"{addr} never answered as the ps")
        time.sleep(0.5)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # SO_REUSEADDR: a port some socket LISTENs on still fails with EADDRINUSE
    daemon_threads = True


def ping(addr: str, nonce: str) -> dict[str, Any]:
    """Reach a worker through ``addr`` until the incarnation with ``nonce`` answers."""
    deadline = time.monotonic() + CONNECT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            with connect(addr, deadline) as s:
                f = s.makefile("rwb")
                send(f, {"op": "ping"})
                answer: dict[str, Any] = recv(f)
            if answer.get("nonce") == nonce:
                return answer
            last = f"answered by another incarnation: {answer}"
        except (OSError, ConnectionError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise ConnectionError(f"{addr} never answered as incarnation {nonce}: {last}")


def ps(cfg: dict[str, Any]) -> int:
    _, port = split(cfg["cluster"]["ps"][cfg["task"]["index"]])
    workers: list[str] = cfg["cluster"]["worker"]
    lock = threading.Lock()
    applied: dict[int, dict[int, list[int]]] = {w: {} for w in range(len(workers))}
    params = [0] * DIM
    hellos = {w: 0 for w in range(len(workers))}
    reached: dict[int, dict[str, Any]] = {}
    finished = threading.Event()

    def result() -> dict[str, Any]:
        expected = [sum(grad(w, r)[k] for w in range(len(workers)) for r in range(ROUNDS)) for k in range(DIM)]
        complete = all(sorted(applied[w]) == list(range(ROUNDS)) for w in applied)
        return {"rounds": {w: sorted(applied[w]) for w in applied}, "params": params, "expected": expected,
                "ok": complete and params == expected, "hellos": hellos, "reached": reached, "port": port}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            nonlocal params
            try:
                send(self.wfile, {"banner": "ps", "port": port})
                while True:
                    msg = recv(self.rfile)
                    w = int(msg["worker"])
                    if msg["op"] == "hello":
                        with lock:
                            hellos[w] += 1
                            resume = next((r for r in range(ROUNDS) if r not in applied[w]), ROUNDS)
                        say(f"worker {w} connected (incarnation {msg['nonce']}), resumes at round {resume}")
                        send(self.wfile, {"resume": resume})
                    elif msg["op"] == "push":
                        r, g = int(msg["round"]), msg["grad"]
                        if g != grad(w, r):
                            raise ValueError(f"worker {w} round {r} pushed {g}, not {grad(w, r)}")
                        with lock:
                            if r not in applied[w]:
                                applied[w][r] = g
                                params = [a + b for a, b in zip(params, g, strict=True)]
                            mine = len(applied[w])
                        send(self.wfile, {"applied": mine})
                    elif msg["op"] == "done":
                        answer = ping(workers[w], msg["nonce"])  # through its Service, as TF_CONFIG gives it
                        say(f"worker {w} done; reached at {workers[w]} -> host port {answer['port']}")
                        with lock:
                            reached[w] = {"port": answer["port"], "nonce": answer["nonce"]}
                            if len(reached) == len(workers):
                                say("RESULT " + json.dumps(result(), sort_keys=True))
                                finished.set()
                        send(self.wfile, {"ok": True})
                        return
            except (ConnectionError, OSError) as exc:
                say(f"connection from {self.client_address} ended: {exc}")

    server = Server(("", port), Handler)
    say(f"ps listening on host port {port}; workers {workers}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    finished.wait()
    server.shutdown()
    with lock:
        return 0 if result()["ok"] else 3


def worker(cfg: dict[str, Any]) -> int:
    index = cfg["task"]["index"]
    _, port = split(cfg["cluster"]["worker"][index])
    nonce = secrets.token_hex(8)

    class Ping(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            recv(self.rfile)
            send(self.wfile, {"index": index, "port": port, "nonce": nonce})

    server = Server(("", port), Ping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    say(f"worker {index} (incarnation {nonce}) serving on host port {port}")
    ps_addr = cfg["cluster"]["ps"][0]
    s, f = connect_ps(ps_addr, time.monotonic() + CONNECT_S)
    send(f, {"op": "hello", "worker": index, "nonce": nonce})
    resume = recv(f)["resume"]
    say(f"connected to ps at {ps_addr}; resuming at round {resume}")
    for r in range(resume, ROUNDS):
        send(f, {"op": "push", "worker": index, "round": r, "grad": grad(index, r)})
        applied = recv(f)["applied"]
        if applied < r + 1:
            say(f"ps has applied only {applied} of my rounds after round {r}")
            return 4
        say(f"round {r} pushed, ps holds {applied} of my rounds")
        time.sleep(PAUSE)
    send(f, {"op": "done", "worker": index, "nonce": nonce})
    recv(f)
    say("done")
    server.shutdown()
    return 0


def main() -> int:
    cfg = json.loads(os.environ["TF_CONFIG"])
    say(f"TF_CONFIG {json.dumps(cfg, sort_keys=True)}")
    role = cfg["task"]["type"]
    return ps(cfg) if role == "ps" else worker(cfg)


if __name__ == "__main__":
    sys.exit(main())
