"""Device selectors in CEL, evaluated with cel-python (`celpy`), as the API defines them.

The variable is ``device``: ``device.driver``, ``device.attributes["<domain>"].<name>``,
``device.capacity["<domain>"].<name>`` (an integer of base units here: celpy has no Kubernetes
quantity type, so ``quantity(...)`` comparisons are not available) and ``device.allowMultipleAllocations``.

A selector is compiled once; its result is cached per device signature (``Device.sig``), so the
thousands of identical fixture or production nodes cost one evaluation per device shape. A runtime
error on a device (for example an attribute that device does not have) makes the selector false
for that device and is remembered: when no device matches, the error is what the pod is told.
"""

from __future__ import annotations

import threading
from typing import Any

from scheduler.dra.api import Device

# celpy (with lark and pendulum) costs ~16 MiB and is imported on the first selector, not with the
# module: `railnet controller` imports the scheduler's quota code, which reaches this, and never needs CEL.


class SelectorError(ValueError):
    """A selector that does not compile."""


def _activation(device: Device) -> dict[str, Any]:
    attrs: dict[str, dict[str, Any]] = {}
    for name, value in device.attrs.items():
        domain, _, short = name.rpartition("/")
        attrs.setdefault(domain, {})[short] = value
    cap: dict[str, dict[str, Any]] = {}
    for name, value in device.capacity.items():
        domain, _, short = name.rpartition("/")
        cap.setdefault(domain, {})[short] = value
    return {"device": {"driver": device.driver, "attributes": attrs, "capacity": cap,
                       "allowMultipleAllocations": device.shareable}}


class Selectors:
    def __init__(self) -> None:
        self._env: Any = None
        self._programs: dict[str, Any] = {}
        self._results: dict[tuple[str, str], bool] = {}
        self.errors: dict[str, str] = {}  # expression -> last runtime error seen
        self._lock = threading.Lock()

    def _program(self, expression: str) -> Any:
        program = self._programs.get(expression)
        if program is None:
            if self._env is None:
                import celpy

                self._env = celpy.Environment()
            try:
                program = self._env.program(self._env.compile(expression))
            except Exception as exc:  # celpy raises its own parse errors
                raise SelectorError(f"CEL selector {expression!r} does not compile: {exc}") from None
            self._programs[expression] = program
        return program

    def matches(self, expression: str, device: Device) -> bool:
        key = (expression, device.sig)
        found = self._results.get(key)
        if found is not None:
            return found
        with self._lock:
            program = self._program(expression)
            import celpy
            from celpy.adapter import json_to_cel

            try:
                value = program.evaluate(json_to_cel(_activation(device)))
                ok = isinstance(value, celpy.celtypes.BoolType) and bool(value)
                if isinstance(value, Exception):
                    raise value
            except Exception as exc:
                self.errors[expression] = _describe(exc)
                ok = False
            self._results[key] = ok
        return ok


def _describe(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], str):  # celpy: (message, exception type, details)
        detail = args[2] if len(args) >= 3 and args[2] else None
        return args[0] + (f" {str(detail[0])!r}" if detail else "")
    return str(exc) or type(exc).__name__
