"""Wake-ups on network link changes: a NIC going down or up, VFs appearing when sriov_numvfs is
raised, a netdev renamed. The kernel announces each on the rtnetlink link group; the topology
publisher republishes at once instead of at its next periodic run. Stdlib only."""

from __future__ import annotations

import socket
import threading

RTMGRP_LINK = 0x1


class LinkEvents:
    """`changed` is set after any link message; bursts (VFs created by the dozen) collapse into one."""

    def __init__(self) -> None:
        self.changed = threading.Event()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, RTMGRP_LINK))
        self._sock.settimeout(0.5)  # so stop() is noticed
        self._thread = threading.Thread(target=self._run, name="link-events", daemon=True)

    def start(self) -> LinkEvents:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._sock.recv(65536):
                    self.changed.set()
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS after a burst: messages were lost, but a change happened
                self.changed.set()
