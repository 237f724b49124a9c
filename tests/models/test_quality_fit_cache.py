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
    assert 0 < q < 5 and set(m.columns_) >= {"log_size", "log_train_tokens", "train_tokens_unknown", "small",
                                          "metric:score"}
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


def test_the_size_law_reads_pre_training_tokens_per_family_and_size(rows):
    from models.quality_rows import training_tokens_t
    assert training_tokens_t("llama2", 7.0) == 2.0
    assert training_tokens_t("llama1", 7.0) == 1.0 and training_tokens_t("llama1", 65.0) == 1.4
    assert training_tokens_t("llama3", 8.0) == 15.0 and training_tokens_t("llama3", 3.0) == 9.0
    assert training_tokens_t("qwen3", 8.0) == 36.0
    assert training_tokens_t("mistral", 7.0) is None          # not stated by its publisher
    r = next(r for r in rows if r.family == "qwen3" and r.size_b)
    assert QF._feats(r)["log_train_tokens"] == pytest.approx(math.log(36.0))
    r = next(r for r in rows if r.family == "mistral")
    assert "log_train_tokens" not in QF._feats(r) and QF._feats(r)["train_tokens_unknown"] == 1.0
    # fitted on the shipped rows, more pre-training tokens means a larger loss (Kumar et al. 2024's direction)
    m, _ = QF.fit_with_interval(rows)
    assert m.coef_[m.index_["log_train_tokens"]] > 0


def test_the_interval_is_calibrated_on_novel_family_method_pairs(rows, monkeypatch):
    """The regression answers only (family, method) pairs no published row holds, so its interval comes from
    the held-out residuals of such pairs; on the shipped rows they run wider than the rest."""
    kept = [r for r in rows if r.size_b or r.family == "small"]
    _, q_novel = QF._fit_with_interval(kept, 1.0, 0.9)
    monkeypatch.setattr(QF, "MIN_NOVEL", 10**6)          # too few novel residuals: every residual calibrates
    _, q_all = QF._fit_with_interval(kept, 1.0, 0.9)
    assert q_novel > q_all > 0
