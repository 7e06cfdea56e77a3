"""A one-line progress bar on stderr (stdlib only; silent when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(
        self, total_steps: int, stream: TextIO | None = None, width: int = 30, force: bool = False
    ) -> None:
        self.total_steps = max(total_steps, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = force or self.stream.isatty()
        self.started = time.monotonic()
        self.done_steps = 0
        self.label = ""

    def update(self, done: int, total: int, label: str = "") -> None:
        """Progress within the current step (``done`` of ``total``)."""
        if not self.enabled:
            return
        self.label = label or self.label
        fraction = min((self.done_steps + done / max(total, 1)) / self.total_steps, 1.0)
        filled = int(fraction * self.width)
        elapsed = time.monotonic() - self.started
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {100 * fraction:5.1f}% {elapsed:6.1f}s {self.label[:40]:<40}")
        self.stream.flush()

    def step_done(self) -> None:
        self.done_steps += 1

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
