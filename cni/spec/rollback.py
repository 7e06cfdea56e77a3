"""Undo what a failed multi-step command already did, in reverse, without hiding why it failed.

Each step registers its undo right after it succeeds. On failure every undo runs (one failing
undo does not stop the others: leaving less behind is the point), failures of undos are logged,
and the original exception is what propagates. contextlib.ExitStack would instead replace the
original error with the first exception an undo raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger("railnet.rollback")


class Rollback:
    def __init__(self, what: str) -> None:
        self.what = what
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def push(self, label: str, undo: Callable[[], object]) -> None:
        self._undo.append((label, undo))

    def run(self) -> None:
        """Run every registered undo, newest first; log (never raise) their failures."""
        while self._undo:
            label, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:
                log.warning("%s: undo of %s failed: %s", self.what, label, exc)

    def __enter__(self) -> Rollback:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.run()
        self._undo.clear()  # success: the steps stay done
