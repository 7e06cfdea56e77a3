"""Host paths as the agent sees them when it runs in a container (the DaemonSet).

A runtime hands the plugin host paths (CNI_NETNS, CNI_PATH) that are valid in the runtime's mount
namespace. An agent in a container that shares the host's PID namespace reaches that namespace, live,
through `/proc/<pid>/root` of a process in it (RAILNET_HOST_ROOT): pod network namespaces mounted after
the agent started are there without any mount propagation, which a host's `/` may not offer.

RAILNET_HOST_ROOT=runtime takes the agent's parent: the runtime's shim (containerd-shim, conmon) that
started the container, which lives where the runtime mounts the pod netns. `/proc/1/root` is the other
usual choice, where the init process may be looked at. Unset (the agent on the host): paths as they are.
"""

from __future__ import annotations

import os


def _root(raw: str) -> str:
    if raw == "runtime":
        return f"/proc/{os.getppid()}/root"
    return raw.rstrip("/")


HOST_ROOT = _root(os.environ.get("RAILNET_HOST_ROOT", ""))


def host_path(path: str) -> str:
    """`path` on the host, as this process can open it."""
    return HOST_ROOT + path if HOST_ROOT and path.startswith("/") else path
