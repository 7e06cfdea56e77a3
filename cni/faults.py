"""Fault-injection points for crash and concurrency tests, off unless the agent's environment
turns one on. Read once at import: the hot path pays one string compare.

`RAILNET_FAULT_POINT=<name>` makes the agent, on reaching `point(<name>)`, write its pid to
`RAILNET_FAULT_FILE`, then
- `RAILNET_FAULT_MODE=stop` (default): stop the whole process (SIGSTOP), so a test can SIGKILL it
  at exactly that step instead of racing a poll against a fast ADD;
- `RAILNET_FAULT_MODE=wait`: pause only this request's thread until the test deletes the file,
  so other requests (a DEL, a GC) can be sent while this one is half done.
"""

from __future__ import annotations

import os
import signal
import threading
import time

_POINT = os.environ.get("RAILNET_FAULT_POINT", "")
_FILE = os.environ.get("RAILNET_FAULT_FILE", "")
_MODE = os.environ.get("RAILNET_FAULT_MODE", "stop")


def point(name: str) -> None:
    if not _POINT or name != _POINT:
        return
    if _FILE:
        with open(_FILE, "w") as f:
            f.write(str(os.getpid()))
    if _MODE == "wait" and _FILE:
        while os.path.exists(_FILE):
            time.sleep(0.01)
    else:
        # Sent to this thread, not the process: a process-directed signal goes to the main thread,
        # and this one would keep running until the main thread gets a CPU to start the group stop.
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
