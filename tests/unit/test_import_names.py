"""railnet's five top-level import names (docs/architecture.md says why they stay top level) must
resolve to this repository: an unrelated `scheduler` or `ipam` from PyPI would shadow one silently."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["cni", "ipam", "netmanager", "scheduler", "railnet"])
def test_top_level_name_is_ours(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve() == REPO / name / "__init__.py"
