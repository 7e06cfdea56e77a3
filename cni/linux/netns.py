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
from cni.spec.hostroot import host_path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    """Opening or entering a network namespace failed (errno says why: ENOENT, EINVAL for a file
    that is not a namespace any more, EPERM)."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns failed: {os.strerror(err)}")


# In a container /proc/sys is read-only; the DaemonSet's agent writes through the host's, under its host root
# (cni.spec.hostroot), or RAILNET_PROC_SYS. net.* entries resolve in the writing thread's namespace whichever
# procfs mount they are opened through.
PROC_SYS_NET = (os.environ.get("RAILNET_PROC_SYS") or host_path("/proc/sys")).rstrip("/") + "/net/"


def sysctl_path(*parts: str) -> str:
    """/proc/sys/net/<parts...>: each part is one path component, so an interface name with dots
    (net1.100) stays one component, and a key from a config can never climb out with '..' or '/'."""
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise ValueError(f"invalid sysctl path component {part!r}")
    return PROC_SYS_NET + "/".join(parts)


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
        try:
            self.fd = os.open(host_path(path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetnsError(exc.errno, f"cannot open network namespace {path}: {exc.strerror}") from None
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

    def write_sysctl(self, parts: tuple[str, ...], value: str) -> None:
        """Write net.<parts> inside the namespace, e.g. ("ipv4", "conf", "net1", "arp_notify")."""
        path = sysctl_path(*parts)
        with entered(self.fd), open(path, "w") as f:
            f.write(value)

    def read_sysctl(self, parts: tuple[str, ...]) -> str:
        with entered(self.fd), open(sysctl_path(*parts)) as f:
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
