"""The openb benchmark's variant list and published rows (tests/bench/openb.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from openb import DEFAULT_TRACES, PUBLISHED, TRACES, parse_traces, published_fgd  # noqa: E402


def test_all_means_the_17_published_variants_each_with_an_fgd_row() -> None:
    assert parse_traces("all") == TRACES
    assert len(TRACES) == 17 and len(set(TRACES)) == 17
    for trace in TRACES:
        row = published_fgd(trace)
        assert row is not None and 80 < row[0] <= row[1] < 100, trace
    assert {t for t, _ in PUBLISHED} == set(TRACES)


def test_traces_option_subsets_and_rejects_unknown_names() -> None:
    assert parse_traces("") == DEFAULT_TRACES
    assert parse_traces("cpu250,gpushare100") == ("cpu250", "gpushare100")
    with pytest.raises(SystemExit, match="cpu999"):
        parse_traces("cpu250,cpu999")
