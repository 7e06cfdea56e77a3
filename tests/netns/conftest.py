"""Fixtures for tests that create real network namespaces and links (root required).

Every namespace/link is created through a Lab, whose finalizer removes it even when the test
fails; a session-end check fails the run if anything named like ours is left on the machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from railnet.dev.lab import REFERENCE_CNI_DIR, Lab, ip
from tests.netns.helpers import PREFIX, Env

_prefixes: set[str] = set()  # labs made by this test session (another run may be going on beside it)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/netns" in str(item.fspath):
            item.add_marker(pytest.mark.netns)


@pytest.fixture(scope="session", autouse=True)
def _root_and_no_leftovers() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("the netns tests need root (they create namespaces and veth links)")
    if not (REFERENCE_CNI_DIR / "macvlan").exists():
        pytest.fail(f"reference CNI plugins missing in {REFERENCE_CNI_DIR}: apt-get install containernetworking-plugins")
    yield
    mine = tuple(_prefixes) or ("\0",)
    left = [n for n in ip("netns", "list").split() if n.startswith(mine)]
    left += [line.split(":")[1].strip() for line in ip("-o", "link").splitlines()
             if line.split(":")[1].strip().startswith(mine)]
    assert not left, f"tests left these behind: {left}"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(PREFIX) as lab:
        _prefixes.add(lab.prefix)
        yield lab


@pytest.fixture
def env(lab: Lab) -> Env:
    return Env(lab, lab.nic("nic"), lab.agent(), lab.install_shim())
