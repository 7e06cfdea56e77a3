"""CNI error object (spec section 5) and railnet's own codes.

Every failure a runtime or a user can cause leaves the plugin as a `CniError`, which the
agent turns into the spec's error object on stdout with a non-zero exit code.
"""

from __future__ import annotations

from typing import Any

# Codes reserved by the CNI spec 1.1.0.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51

# railnet's codes (the spec leaves 100 and up to plugins).
INTERFACE_EXISTS = 100
MASTER_NOT_FOUND = 101
POOL_EXHAUSTED = 102
KERNEL_REFUSED = 103
CHECK_FAILED = 104
DELEGATE_FAILED = 105
NETNS_FAILED = 106
# Pool-level conditions of the cluster store (IPPool objects), ipam/cluster.py.
POOL_FULL = 110  # every block of the pool is claimed and this node's blocks are full
POOL_NOT_ALLOWED = 111  # the pool's nodeSelector or networks exclude this node or network
POOL_UNKNOWN = 112  # no IPPool of that name in the cluster
POOL_CONFLICT = 113  # the pool overlaps another pool, or a block is held by another node
INTERNAL = 999  # libcni's ErrInternal


class CniError(Exception):
    """A CNI failure: `msg` says what went wrong, `details` says what to fix."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_object(self, cni_version: str) -> dict[str, Any]:
        obj: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            obj["details"] = self.details
        return obj

    def __str__(self) -> str:
        return f"[{self.code}] {self.msg}" + (f": {self.details}" if self.details else "")
