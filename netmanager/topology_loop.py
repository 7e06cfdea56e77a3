"""The agent's topology publishing: discover from sysfs and publish the NodeTopology at start-up,
again within a second or two of any network link change (netmanager.link_events: a NIC down, VFs
added), and every `interval` seconds for changes no link event announces (an unchanged topology
costs one GET). Runs on its own daemon thread and retries with back-off, so an unreachable API
server never delays a CNI call."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from netmanager.link_events import LinkEvents

log = logging.getLogger("railnet.topology")


class TopologyPublisher:
    SETTLE = 1.0  # after a link event, wait this long so a burst is published once

    def __init__(self, kubeconfig: Path, node_name: str, sysfs: Path, interval: float = 300.0) -> None:
        self.kubeconfig = kubeconfig
        self.node_name = node_name
        self.sysfs = sysfs
        self.interval = interval
        self._stop = threading.Event()
        self._events = LinkEvents()
        self._thread = threading.Thread(target=self._run, name="topology", daemon=True)

    def start(self) -> None:
        self._events.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._events.changed.set()  # wakes the loop
        self._events.stop()

    def _sleep(self, seconds: float) -> None:
        """Until `seconds` pass, a link changes (then settle) or stop() is called."""
        if self._events.changed.wait(seconds) and not self._stop.is_set():
            self._stop.wait(self.SETTLE)
        self._events.changed.clear()

    def _run(self) -> None:
        import kubernetes

        from netmanager.topology_publisher import publish_from_discovery

        k8s: Any = kubernetes  # the client's own types are partial
        api = k8s.config.new_client_from_config(config_file=str(self.kubeconfig))
        custom, core = k8s.client.CustomObjectsApi(api), k8s.client.CoreV1Api(api)
        delay = 1.0
        while not self._stop.is_set():
            try:
                outcome = publish_from_discovery(custom, core, self.node_name, str(self.sysfs))
                log.info("NodeTopology %s", outcome, extra={"fields": {"node": self.node_name}})
                delay = 1.0
                wait = self.interval
            except Exception as exc:  # the API server or sysfs: log, back off, try again
                log.warning("cannot publish NodeTopology: %s", exc, extra={"fields": {"node": self.node_name}})
                wait, delay = delay, min(delay * 2, 60.0)
            self._sleep(wait)
        api.close()
