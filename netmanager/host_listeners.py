"""The TCP ports host processes listen on, published on the agent's Node as the annotation
`railnet.io/host-listeners` ("22,2379-2380,10250"), so the job controller never gives a
host-network replica a port a daemon on that node already holds (KubeDL picks ports blindly).

Read from /proc/net/tcp and tcp6 of the agent's namespace, which is the host's (the agent runs with
hostNetwork): sockets in state LISTEN (0A). Published at start and whenever the set changes, checked
every `interval` seconds, on a daemon thread with back-off, so a slow API server never delays a CNI call.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("railnet.host-listeners")

ANNOTATION = "railnet.io/host-listeners"
LISTEN = "0A"


def listening_ports(proc_net: Path = Path("/proc/net")) -> set[int]:
    """Local ports of TCP sockets in LISTEN, IPv4 and IPv6."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def compact(ports: Iterable[int]) -> str:
    """{22, 2379, 2380} -> "22,2379-2380" (the annotation's format; jobs.ports.parse_ports reads it)."""
    out: list[str] = []
    run: list[int] = []
    for port in sorted(set(ports)):
        if run and port == run[-1] + 1:
            run.append(port)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [port]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


class ListenerPublisher:
    def __init__(self, kubeconfig: Path, node_name: str, interval: float = 10.0,
                 proc_net: Path = Path("/proc/net")) -> None:
        self.kubeconfig = kubeconfig
        self.node_name = node_name
        self.interval = interval
        self.proc_net = proc_net
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-listeners", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import kubernetes

        k8s: Any = kubernetes  # the client's own types are partial
        api = k8s.config.new_client_from_config(config_file=str(self.kubeconfig))
        core = k8s.client.CoreV1Api(api)
        published: str | None = None
        delay = 1.0
        while not self._stop.is_set():
            value = compact(listening_ports(self.proc_net))
            wait = self.interval
            if value != published:
                body = {"metadata": {"annotations": {ANNOTATION: value}}}
                try:  # a merge patch of one annotation; the reply is not parsed into models
                    core.patch_node(self.node_name, body, _preload_content=False).read()
                    published, delay = value, 1.0
                    log.info("host listeners %s", value, extra={"fields": {"node": self.node_name}})
                except Exception as exc:  # the API server: log, back off, try again
                    log.warning("cannot publish host listeners: %s", exc,
                                extra={"fields": {"node": self.node_name, "ports": json.dumps(value)}})
                    wait, delay = delay, min(delay * 2, 60.0)
            self._stop.wait(wait)
        api.close()
