from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from railnet.dev.fixtures import BuiltServer, build_fixture

from .tmpfs import fast_tmp_base


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Overrides pytest's tmp_path for this package only, to put it on tmpfs."""
    path = Path(tempfile.mkdtemp(prefix="railnet-topo-", dir=fast_tmp_base()))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fast_tempfile(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI's --fixture builds under tempfile's default directory.
    monkeypatch.setattr(tempfile, "tempdir", fast_tmp_base() or tempfile.gettempdir())


@pytest.fixture
def make_fixture(tmp_path: Path) -> Callable[[str], BuiltServer]:
    """Build a named fixture server in this test's tmp_path: for tests that modify the tree."""

    def make(name: str) -> BuiltServer:
        return build_fixture(name, tmp_path / name)

    return make


@pytest.fixture(scope="session")
def shared_fixture() -> Iterator[Callable[[str], BuiltServer]]:
    """A named fixture server built once per session: for tests that only read it."""
    base = Path(tempfile.mkdtemp(prefix="railnet-topo-shared-", dir=fast_tmp_base()))
    cache: dict[str, BuiltServer] = {}

    def get(name: str) -> BuiltServer:
        if name not in cache:
            cache[name] = build_fixture(name, base / name)
        return cache[name]

    yield get
    shutil.rmtree(base, ignore_errors=True)
