"""models/quality_evict.py: an eviction policy's loss as a law in context / budget (issue 11)."""
from __future__ import annotations

import math

import pytest

from models.quality_evict import curve_at, evict_law
from models.quality_rows import Row
from profiles import load


def test_the_curve_starts_at_no_loss_interpolates_and_extrapolates_along_its_last_slope():
    pts = [(1.0, 2.0), (3.0, 6.0)]
    assert curve_at(pts, 0.5) == (pytest.approx(1.0), False)     # between (0, 0) and the first point
    assert curve_at(pts, 2.0) == (pytest.approx(4.0), False)
    assert curve_at(pts, 4.0) == (pytest.approx(8.0), True)      # past the table: slope 2 per unit of x
    assert curve_at([(1.0, 5.0), (2.0, 3.0)], 2.0)[0] == pytest.approx(4.0)  # a dip is pooled: never falls
    assert curve_at(pts, 100.0)[0] == 100.0                      # capped at a score's whole scale


def _table(model="llama3-8b", ctx=8000):
    comp = ("kv", "snapkv")
    return comp, [Row(model, "llama3", 8.0, comp, b, "longbench_avg", loss, f"t {model}", "published",
                      kind="longctx_drop", context=ctx) for b, loss in ((2000, 0.5), (500, 4.0), (125, 8.0))]


def test_the_law_depends_on_the_ratio_of_context_to_budget():
    """A budget at a context answers what the table shows at the same ratio: 1,000 tokens at 16k is the
    table's 500 at 8k; 4,000 at 64k is its 500 at 8k too."""
    comp, rows = _table()
    llm = load().llm("llama3.1-8b")
    a = evict_law(rows, {}, llm, comp, 1000, "longctx_drop", 16000)
    b = evict_law(rows, {}, llm, comp, 4000, "longctx_drop", 64000)
    assert a.loss == pytest.approx(4.0) and b.loss == pytest.approx(4.0)
    mid = evict_law(rows, {}, llm, comp, 1000, "longctx_drop", 8000)  # between the 2000 and 500 rows in ln ratio
    t = (math.log(8) - math.log(4)) / (math.log(16) - math.log(4))
    assert mid.loss == pytest.approx(0.5 + t * 3.5)
    assert evict_law(rows, {}, llm, comp, 8000, "longctx_drop", 8000) is None  # fits: no law to ask
    far = evict_law(rows, {}, llm, comp, 100, "longctx_drop", 64000)
    assert far.loss > 8.0 and "extrapolated" in far.cites[-1]
    assert far.high - far.loss > mid.high - mid.loss   # wider past the table
