"""Working inside a pod's network namespace without forking.

A netlink socket stays bound to the namespace it was created in, so we enter the namespace on
the current thread only (setns is per-thread for CLONE_NEWNET), open the socket, and return.
pyroute2's own netns support forks a helper per socket, which costs milliseconds per ADD.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute

from cni.linux.rtnl import Rtnl

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


@contextmanager
def entered(ns_fd: int) -> Iterator[None]:
    """Run the body with this thread inside the namespace; always come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(ns_fd)
        try:
            yield
        finally:
            _setns(home)  # if this fails the thread is in the wrong namespace: let it raise loudly
    finally:
        os.close(home)


class NetNS:
    """An open handle on a network namespace path, with netlink sockets inside it: a raw one for
    the hot path (`rtnl`) and, created on first use, pyroute2's for everything else (`ipr`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self._ipr: Any = None
        try:
            with entered(self.fd):
                self.rtnl = Rtnl()
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            with entered(self.fd):
                self._ipr = IPRoute()
        return self._ipr

    def sysctl(self, key: str, value: str) -> None:
        """Write net.* sysctl `key` (dotted, e.g. ipv4.conf.net1.arp_notify) inside the namespace."""
        path = "/proc/sys/net/" + key.replace(".", "/")
        with entered(self.fd), open(path, "w") as f:
            f.write(value)

    def read_sysctl(self, key: str) -> str:
        with entered(self.fd), open("/proc/sys/net/" + key.replace(".", "/")) as f:
            return f.read().strip()

    def close(self) -> None:
        self.rtnl.close()
        if self._ipr is not None:
            self._ipr.close()
        os.close(self.fd)

    def __enter__(self) -> NetNS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
