"""Host paths as the agent sees them when it runs in a container (the DaemonSet).

A runtime hands the plugin host paths (CNI_NETNS, CNI_PATH). An agent in a container with the host's
PID namespace reaches the host's mount namespace, live, through `/proc/1/root` (RAILNET_HOST_ROOT):
pod network namespaces mounted after the agent started are there without any mount propagation,
which a host's `/` may not offer. Unset (the agent on the host), paths are used as they are.
"""

from __future__ import annotations

import os

HOST_ROOT = os.environ.get("RAILNET_HOST_ROOT", "").rstrip("/")


def host_path(path: str) -> str:
    """`path` on the host, as this process can open it."""
    return HOST_ROOT + path if HOST_ROOT and path.startswith("/") else path
