"""A plain TCP rendezvous over PyTorch's environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK);
Python standard library only, no framework.

* Rank 0 (the master) listens on MASTER_PORT (its host port in host-network mode) and runs ``ROUNDS``
  all-reduce rounds: each rank sends its value for the round, the master adds its own and, once it
  holds every rank's value, answers each with the sum. A rank that (re)connects is told the first
  round it has not contributed to, so a replacement rejoins where the lost one stopped while the
  others wait in the round they are in. When every rank reported done the master prints
  ``RESULT <json>`` and exits 0 if every round holds every rank's correct value, else 3.
* Other ranks connect to MASTER_ADDR:MASTER_PORT, contribute to every round (``ROUND_PAUSE``
  seconds apart), check each sum against what all ranks must have sent, report done, exit 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import sys
import threading
import time
from typing import Any, BinaryIO

ROUNDS = int(os.environ.get("ROUNDS", "30"))
PAUSE = float(os.environ.get("ROUND_PAUSE", "0.3"))
WAIT_S = 180.0


_OUT = threading.Lock()


def say(*parts: object) -> None:
    """One whole line per call: handler threads print concurrently, and print() writes the newline apart."""
    with _OUT:
        sys.stdout.write(" ".join(map(str, parts)) + "\n")
        sys.stdout.flush()


def value(rank: int, rnd: int) -> int:
    return (rank + 1) * 100 + rnd


def send(f: BinaryIO, obj: Any) -> None:
    f.write(json.dumps(obj).encode() + b"\n")
    f.flush()


def recv(f: BinaryIO) -> Any:
    line = f.readline()
    if not line:
        raise ConnectionError("peer closed the connection")
    return json.loads(line)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def master(port: int, world: int) -> int:
    cond = threading.Condition()
    values: dict[int, dict[int, int]] = {r: {0: value(0, r)} for r in range(ROUNDS)}
    hellos = {rank: 0 for rank in range(1, world)}
    done: set[int] = set()
    finished = threading.Event()

    def expected(rnd: int) -> int:
        return sum(value(rank, rnd) for rank in range(world))

    def result() -> dict[str, Any]:
        complete = all(sorted(values[r]) == list(range(world)) for r in values)
        correct = all(values[r][rank] == value(rank, r) for r in values for rank in values[r])
        return {"rounds": ROUNDS, "world": world, "complete": complete, "ok": complete and correct,
                "hellos": hellos, "port": port}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                send(self.wfile, {"banner": "master", "port": port})
                while True:
                    msg = recv(self.rfile)
                    rank = int(msg["rank"])
                    if msg["op"] == "hello":
                        with cond:
                            hellos[rank] += 1
                            resume = next((r for r in range(ROUNDS) if rank not in values[r]), ROUNDS)
                        say(f"rank {rank} joined from {self.client_address[0]}, resumes at round {resume}")
                        send(self.wfile, {"resume": resume})
                    elif msg["op"] == "value":
                        r = int(msg["round"])
                        with cond:
                            values[r][rank] = int(msg["value"])
                            cond.notify_all()
                            if not cond.wait_for(lambda r=r: len(values[r]) == world, WAIT_S):
                                raise ConnectionError(f"round {r} never completed: {sorted(values[r])}")
                            total = sum(values[r].values())
                        send(self.wfile, {"round": r, "sum": total})
                    elif msg["op"] == "done":
                        with cond:
                            done.add(rank)
                            if len(done) == world - 1:
                                say("RESULT " + json.dumps(result(), sort_keys=True))
                                finished.set()
                        say(f"rank {rank} done")
                        send(self.wfile, {"ok": True})
                        return
            except (ConnectionError, OSError) as exc:
                say(f"connection from {self.client_address} ended: {exc}")

    server = Server(("", port), Handler)
    say(f"master listening on port {port} for {world - 1} ranks (expected sums {expected(0)}..)")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    finished.wait()
    server.shutdown()
    with cond:
        return 0 if result()["ok"] else 3


def connect_master(addr: str, port: int) -> tuple[socket.socket, BinaryIO] | None:
    """Connect to the master and read its banner; anything else on the other end is not the master (yet).

    A Service's ClusterIP reaches its endpoint only once kube-proxy has written the rules for it; a
    connection made before that goes wherever the host routes the address, so a missing or wrong
    banner means: close and try again (as a rendezvous client's handshake would)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection((addr, port), timeout=10)
        except OSError:
            time.sleep(0.3)
            continue
        s.settimeout(5)
        f = s.makefile("rwb")
        line, banner = b"", None
        with contextlib.suppress(OSError, ValueError):
            line = f.readline()
            banner = json.loads(line)
        if isinstance(banner, dict) and banner.get("banner") == "master":
            s.settimeout(WAIT_S + 30)
            return s, f
        say(f"{addr}:{port} is not the master yet (answered {line[:60]!r}); retrying")
        s.close()
        time.sleep(0.5)
    return None


def rank_main(addr: str, port: int, rank: int, world: int) -> int:
    joined = connect_master(addr, port)
    if joined is None:
        say(f"cannot reach the master at {addr}:{port}")
        return 5
    s, f = joined
    send(f, {"op": "hello", "rank": rank})
    resume = recv(f)["resume"]
    say(f"rank {rank} of {world} joined the master at {addr}:{port}; resuming at round {resume}")
    for r in range(resume, ROUNDS):
        send(f, {"op": "value", "rank": rank, "round": r, "value": value(rank, r)})
        answer = recv(f)
        want = sum(value(k, r) for k in range(world))
        if answer != {"round": r, "sum": want}:
            say(f"round {r}: master answered {answer}, expected sum {want}")
            return 4
        say(f"round {r} sum {want} ok")
        time.sleep(PAUSE)
    send(f, {"op": "done", "rank": rank})
    recv(f)
    say("done")
    return 0


def main() -> int:
    env = {k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")}
    say(f"env {json.dumps(env, sort_keys=True)}")
    rank, world, port = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["MASTER_PORT"])
    return master(port, world) if rank == 0 else rank_main(env["MASTER_ADDR"], port, rank, world)


if __name__ == "__main__":
    sys.exit(main())
