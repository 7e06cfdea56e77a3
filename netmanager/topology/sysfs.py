"""Small, error-normalising readers over a sysfs root.

Every failure becomes a ``TopologyError`` whose message is one line naming the path, so the CLI and
the agent can report it without a traceback. Optional attributes (absent on some kernels or devices)
are read with the ``*_or`` helpers, which only tolerate "does not exist".
"""

from __future__ import annotations

import os
from pathlib import Path


class TopologyError(Exception):
    """Bad or unreadable topology input; the message names the offending path."""


class Sysfs:
    """A sysfs tree rooted at ``root`` (``/sys`` on a real node, a temp dir in tests)."""

    def __init__(self, root: str | os.PathLike[str] = "/sys") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise TopologyError(f"sysfs root {self.root} does not exist or is not a directory")

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def read(self, path: Path) -> str:
        try:
            return path.read_text(encoding="ascii", errors="replace").strip()
        except OSError as exc:
            raise TopologyError(f"cannot read {path}: {exc.strerror or exc}") from None

    def read_or(self, path: Path, default: str | None = None) -> str | None:
        if not self.exists(path):
            return default
        return self.read(path)

    def read_int(self, path: Path, base: int = 10) -> int:
        text = self.read(path)
        try:
            return int(text, base)
        except ValueError:
            raise TopologyError(f"{path}: expected an integer, found {text[:40]!r}") from None

    def read_int_or(self, path: Path, default: int | None = None, base: int = 10) -> int | None:
        if not self.exists(path):
            return default
        return self.read_int(path, base)

    def listdir(self, path: Path) -> list[str]:
        """Sorted entries of a directory; an absent directory is empty (class dirs are optional)."""
        if not self.exists(path):
            return []
        try:
            return sorted(os.listdir(path))
        except OSError as exc:
            raise TopologyError(f"cannot list {path}: {exc.strerror or exc}") from None

    def resolve(self, path: Path) -> Path:
        """Follow symlinks; the target must lie inside the root (sysfs links are relative)."""
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise TopologyError(f"cannot resolve link {path}: {getattr(exc, 'strerror', None) or exc}") from None
        root = self.root.resolve()
        if target != root and root not in target.parents:
            raise TopologyError(f"link {path} points outside the sysfs root: {target}")
        return target

    def link_name(self, path: Path) -> str | None:
        """Basename of a symlink's target (e.g. a PCI address), or None when the link is absent."""
        if not self.exists(path):
            return None
        return self.resolve(path).name


def parse_cpulist(text: str, where: Path | str = "cpulist") -> list[int]:
    """Parse the kernel's list format: ``0-3,8,10-11``; empty means no CPUs."""
    cpus: list[int] = []
    for chunk in text.replace("\n", ",").split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        try:
            if "-" in chunk:
                low, high = chunk.split("-", 1)
                cpus.extend(range(int(low), int(high) + 1))
            else:
                cpus.append(int(chunk))
        except ValueError:
            raise TopologyError(f"{where}: bad CPU list {text[:40]!r}") from None
    return cpus
