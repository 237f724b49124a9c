"""models/quality_pool.py: the size pooling that keeps a family's figures monotone in size (issue 11)."""
from __future__ import annotations

import pytest

from models.quality import QualityModel
from profiles import load

from .test_quality import _pooled_rows


@pytest.fixture(scope="module")
def cat():
    return load()


def test_size_pooling_follows_the_better_evidence_and_stays_monotone():
    """A figure of one size with a wide (rounding) interval does not override narrow evidence at another
    size: the family's figures pool by weight into a fit that never grows with size."""
    from models.quality_pool import pool_by_size
    w = [1 / 0.005 ** 2, 1 / 0.035 ** 2]
    mean = (0.07 * w[0] + 0.14 * w[1]) / sum(w)
    assert pool_by_size([8, 70], [0.07, 0.14], w) == pytest.approx([mean] * 2) and mean < 0.075
    assert pool_by_size([1, 8, 70], [0.10, 0.05, 0.02], [1, 1, 1]) == [0.10, 0.05, 0.02]  # already monotone
    fit = pool_by_size([8, 8, 70], [0.05, 0.07, 0.2], [1, 1, 2])
    assert fit[0] == fit[1] == fit[2]  # tied sizes pool; then the larger violator pools with them


def test_size_pooling_weighs_figures_by_their_printed_precision_not_by_their_size(cat):
    """Monotone in size, the three figures pool into one; printed alike, each weighs alike (the relative,
    calibrated width would have let the near-zero figure outweigh the two others)."""
    comp, rows = _pooled_rows()
    q = QualityModel(rows, [], {}, learn=False, catalog=cat, widths={"ppl_delta/exact": 0.5})
    own = [max(r.loss, 0.0) for r in rows]
    for m in ("qwen3-4b", "qwen3-8b", "qwen3-14b"):
        c = q.component(cat.llm(m), comp, None, "ppl_delta")
        assert c.loss == pytest.approx(sum(own) / 3)


def test_a_pooled_figure_carries_the_family_rules_width_around_it(cat):
    """The 4B's own row says no loss (a printed gain); pooled with the larger sizes its figure moves up. The
    interval holds both the own rows' interval and the family rule's calibrated width around the moved figure,
    so the figure does not sit on the interval's upper edge."""
    comp, rows = _pooled_rows()
    q = QualityModel(rows, [], {}, learn=False, catalog=cat, widths={"ppl_delta/exact": 0.5, "ppl_delta/family": 0.8})
    own = q._raw(cat.llm("qwen3-4b"), comp, None, "ppl_delta")
    c = q.component(cat.llm("qwen3-4b"), comp, None, "ppl_delta")
    assert c.loss > own.loss and c.low <= own.low
    assert c.high == pytest.approx(max(own.high, c.loss + 0.8 * max(c.loss, 0.01)))
