"""`make demo`: a RoCE-style secondary network on this machine, end to end.

Builds a lab (a veth pair as the "RoCE NIC", pod network namespaces), starts the node agent,
attaches a macvlan interface to every pod through the real shim -> agent path with addresses
from an embedded pool, proves pod-to-pod traffic over it, then tears everything down through
DEL and checks that nothing leaked.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import sys
import threading
import time
from typing import Any

from cni.linux.netns import NetNS, entered
from railnet.dev.lab import Lab, PluginCall, ip, links_in, run_plugin

# Dual stack: one IPv4 and one IPv6 range set, inline (a named pool file holds one IPPool, one family).
IPAM = {"type": "railnet-ipam", "ranges": [[{"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.10"}],
                                           [{"subnet": "fd00:250::/64"}]]}


class Step:
    """Numbered progress lines; a failing step stops the demo with its reason."""

    def __init__(self, total: int) -> None:
        self.n, self.total = 0, total

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {text}", flush=True)


def tcp_round_trip(server_ns: str, server_ip: str, client_ns: str, client_ip: str) -> float:
    """Open a TCP connection from one pod to another over the secondary network; return RTT in ms."""
    with NetNS(server_ns) as sns, entered(sns.fd):
        server = socket.create_server((server_ip, 0), family=socket.AF_INET)
    server.settimeout(5)
    port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(64))

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        with NetNS(client_ns) as cns, entered(cns.fd):
            client = socket.create_connection((server_ip, port), timeout=5, source_address=(client_ip, 0))
        with client:
            started = time.perf_counter()
            client.sendall(b"railnet")
            if client.recv(64) != b"railnet":
                raise RuntimeError("echo mismatch")
            return (time.perf_counter() - started) * 1e3
    finally:
        thread.join(5)
        server.close()


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([line.format(*header), line.format(*("-" * w for w in widths))] + [line.format(*r) for r in rows])


def run(pods: int) -> int:
    if os.geteuid() != 0:
        print("railnet demo: needs root (it creates network namespaces and links)", file=sys.stderr)
        return 1
    step = Step(6)
    lab = Lab("rnd")
    ok = False
    try:
        step(f"building the lab: a veth pair as the RoCE NIC, {pods} pod namespaces (prefix {lab.prefix})")
        nic = lab.nic("nic", mtu=9000)
        namespaces = [lab.netns(f"pod{i}") for i in range(pods)]

        step("starting railnet-agent and installing the CNI shim")
        agent = lab.agent()
        bin_dir = lab.install_shim()
        conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": "rail0", "type": "railnet-macvlan", "master": nic,
                                "mode": "bridge", "ipam": IPAM}

        step("CNI ADD through shim -> agent for every pod")
        results: list[PluginCall] = []
        for i, ns in enumerate(namespaces):
            call = run_plugin(bin_dir / "railnet-macvlan", "ADD", conf, container_id=f"demo-{i}", ifname="net1",
                              netns=ns, env=agent.env())
            if not call.ok or call.output is None:
                raise RuntimeError(f"ADD for pod{i} failed: {call.output}")
            results.append(call)
        rows = []
        for i, call in enumerate(results):
            out = call.output or {}
            rows.append([f"pod{i}", "net1", ", ".join(a["address"] for a in out["ips"]),
                         out["interfaces"][0]["mac"], nic, f"{call.seconds * 1e3:.1f}"])
        print(table(rows, ["pod", "interface", "IPs", "MAC", "parent NIC", "ADD ms"]))

        step("pod-to-pod TCP over the secondary network")
        v4 = [(call.output or {})["ips"][0]["address"].split("/")[0] for call in results]
        for i in range(pods):
            j = (i + 1) % pods
            rtt = tcp_round_trip(namespaces[j], v4[j], namespaces[i], v4[i])
            print(f"    pod{i} {v4[i]} -> pod{j} {v4[j]}: TCP echo ok, {rtt:.2f} ms")

        step("CNI DEL for every pod")
        for i, ns in enumerate(namespaces):
            call = run_plugin(bin_dir / "railnet-macvlan", "DEL", conf, container_id=f"demo-{i}", ifname="net1",
                              netns=ns, env=agent.env())
            if not call.ok:
                raise RuntimeError(f"DEL for pod{i} failed: {call.output}")

        step("checking that nothing leaked")
        leftover_links = {f"pod{i}": links_in(ns) for i, ns in enumerate(namespaces) if links_in(ns) != ["lo"]}
        with sqlite3.connect(agent.db_path) as db:
            ips = db.execute("SELECT COUNT(*) FROM ipam_allocation").fetchone()[0]
            records = db.execute("SELECT COUNT(*) FROM attachment").fetchone()[0]
        problems = lab.close()
        left = [n for n in ip("netns", "list").split() if n.startswith(lab.prefix)]
        left += [line.split(":")[1].strip() for line in ip("-o", "link").splitlines()
                 if line.split(":")[1].strip().startswith(lab.prefix)]
        print(f"    interfaces left in pods: {leftover_links or 'none'}; IPs held: {ips}; "
              f"attachment records: {records}; lab namespaces/links left: {left or 'none'}")
        ok = not (leftover_links or ips or records or left or problems)
        if not ok:
            raise RuntimeError(f"leak detected: {problems or left or leftover_links}")
        print("demo passed: attach, traffic and teardown all worked, nothing leaked")
        return 0
    except Exception as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not ok:
            lab.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet demo", description=__doc__)
    parser.add_argument("--pods", type=int, default=3, help="number of pod namespaces (default %(default)s)")
    return run(parser.parse_args(argv).pods)


if __name__ == "__main__":
    sys.exit(main())
