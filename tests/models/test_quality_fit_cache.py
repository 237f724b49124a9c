"""models.quality_fit.fit_with_interval against an empty cache: the leave-one-source-out loop runs, its
result is stored under a key of the rows' content, a second call is served from the cache with the same
predictions and interval, and changed rows miss it. Too few rows fit nothing."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from models import quality_fit as QF
from models.quality import QualityModel
from profiles import load


@pytest.fixture(scope="module")
def rows():
    qm = QualityModel.from_catalog(load())
    return qm.published_ppl + qm.measured


def test_fit_stored_then_served_from_the_cache(rows, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_CACHE_DIR", str(tmp_path))
    calls = []
    real = QF._fit_with_interval
    monkeypatch.setattr(QF, "_fit_with_interval", lambda *a: calls.append(1) or real(*a))
    m, q = QF.fit_with_interval(rows)
    assert calls == [1] and len(list(tmp_path.glob("quality-fit-*.json"))) == 1
    assert 0 < q < 5 and set(m.columns_) >= {"log_size", "llama3", "small", "metric:score"}
    kept = [r for r in rows if r.size_b or r.family == "small"]
    assert m.methods_ == {r.component for r in kept}
    # the interval is the 90% quantile of held-out |log residual|: most held-out rows fall inside it
    m2, q2 = QF.fit_with_interval(rows)
    assert calls == [1] and q2 == q and m2.columns_ == m.columns_ and m2.methods_ == m.methods_
    np.testing.assert_allclose(m2.predict(kept[:50]), m.predict(kept[:50]))
    changed = [dataclasses.replace(kept[0], loss=kept[0].loss * 2)] + kept[1:]
    QF.fit_with_interval(changed)
    assert calls == [1, 1] and len(list(tmp_path.glob("quality-fit-*.json"))) == 2
    assert QF.fit_with_interval(kept[:19]) == (None, None)


def test_drop_layers_and_kv_budget_features(rows):
    r = next(r for r in rows if r.size_b)
    drop = dataclasses.replace(r, component=("sparsity", QF.DROP_LAYERS), budget=250)
    f = QF._feats(drop)
    assert f["drop_frac"] == 0.25 and f[f"m:sparsity:{QF.DROP_LAYERS}"] == 1.0
    assert f["log_size"] == pytest.approx(math.log(r.size_b))
    assert "drop_frac" not in QF._feats(dataclasses.replace(drop, budget=None))
    kv = QF._feats(dataclasses.replace(r, component=("kv", "snapkv"), budget=256))
    assert kv["budget:snapkv"] == -2.0  # log2(256 / 1024)
