"""The quick subset of the fuzz suite (tests/fuzz): a fixed seed, 42 cases over every surface (6 each).

The long mode runs hundreds: ``python3 -m tests.fuzz --cases 400 --seed S``.
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz import run
from tests.fuzz.surfaces import SURFACES

SEED = 20261201
QUICK = SURFACES


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the saves surface forks")
def test_fuzz_quick_subset():
    report = run(cases=42, seed=SEED, workers=2, timeout=180.0, surfaces=QUICK)
    assert len(report.results) == 42
    counts = report.counts()
    assert counts["clean"] + counts["correct"] == 42, report.summary()
    # every surface ran, and both outcomes occur (the generators make valid inputs too)
    assert len(report.by_surface()) == len(SURFACES)
    assert counts["correct"] > 0 and counts["clean"] > 0
