"""models/quality_validate.py: the error beyond the published rounding (issue 11: a printed pair is an
interval, not a point)."""
from __future__ import annotations

import pytest

from models.quality_rows import PPL, Row, row_loss
from models.quality_validate import _beyond_rounding, _meets_rounding


def _row(baseline: float, value: float) -> Row:
    loss, lo, hi = row_loss(PPL, baseline, value)
    return Row("m", "f", 8.0, ("precision", "x"), None, "wikitext2_ppl", loss, "c", "published", lo=lo, hi=hi)


def test_inside_the_rounding_interval_is_no_error():
    r = _row(8.2, 8.3)          # 0.0 .. 2.4 %
    assert _beyond_rounding(r, 0.0) == 0.0
    assert _beyond_rounding(r, 0.02) == 0.0


def test_outside_it_the_distance_to_its_nearer_end():
    r = _row(8.2, 8.3)
    hi = (8.35 / 8.15) - 1
    assert _beyond_rounding(r, 0.05) == pytest.approx(0.05 - hi)
    r2 = _row(2.9, 3.3)         # 10.2 .. 17.5 %
    assert _beyond_rounding(r2, 0.065) == pytest.approx(3.25 / 2.95 - 1 - 0.065)


def test_a_row_without_bounds_falls_back_to_its_point_and_a_gain_reads_as_zero():
    r = Row("m", "f", 8.0, ("precision", "x"), None, "wikitext2_ppl", -0.01, "c", "published")
    assert _beyond_rounding(r, 0.0) == 0.0
    assert _beyond_rounding(r, 0.03) == pytest.approx(0.03)


def test_rounding_aware_coverage_asks_whether_the_intervals_meet():
    r = _row(6.1, 6.2)          # 0.0 .. 3.3 %: a point 1.6%
    assert _meets_rounding(r, 0.0, 0.0044)          # the point lies outside [0, 0.44%], the printed pair does not
    assert not _meets_rounding(r, 0.04, 0.06)
    assert _meets_rounding(r, 0.03, 0.06)


def test_the_pooled_4_to_8_bit_group_holds_the_4_and_8_bit_families_and_gguf_types_of_4_to_8_5_bits():
    from profiles import load

    from models.quality_validate import _four_to_eight_bits
    cat = load()
    assert _four_to_eight_bits(("precision", "awq-int4"), cat)
    assert _four_to_eight_bits(("precision", "fp8"), cat)
    assert _four_to_eight_bits(("precision", "rtn-int4"), cat)       # a published-only 4-bit label
    assert _four_to_eight_bits(("precision", "gguf-q8_0"), cat)      # 8.5 bits per weight
    assert _four_to_eight_bits(("precision", "gguf-q4_k_m"), cat)
    assert not _four_to_eight_bits(("precision", "gguf-f16"), cat)   # 16 bits
    assert not _four_to_eight_bits(("precision", "gguf-q2_k"), cat)  # not a catalog type: no bits to read
    assert not _four_to_eight_bits(("precision", "quip#-int2"), cat)
    assert not _four_to_eight_bits(("kv", "kivi-2bit"), cat)


def test_served_figures_are_scored_on_rows_of_their_own_dataset_only():
    from profiles import load

    from models.quality_validate import POOLED_4_8, held_out
    res = held_out(load(), "paper")["as_served"]["ppl_delta"]
    fams = {k: v for k, v in res.items() if not k.startswith("_")}
    assert res["_other_dataset_rows"] > 0       # C4 and word-perplexity rows exist, and are not scored
    assert fams[POOLED_4_8]["n"] == sum(v["n"] for k, v in fams.items() if k in ("4-bit weight", "8-bit weight")) + \
        fams.get("gguf", {"n": 0})["n"]
