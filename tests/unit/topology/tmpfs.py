"""Where tests put fixture trees."""

from __future__ import annotations

import os


def fast_tmp_base() -> str | None:
    """tmpfs when there is one: fixture trees are thousands of tiny files, and a disk shared with a
    busy build can turn each file create into milliseconds. None means tempfile's default."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
