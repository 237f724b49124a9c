"""A learned quality model: one regression over published and measured rows together.

log(loss) = method effect + metric-kind effect + size slope + pre-training-tokens slope + budget / depth terms
(the size law of Kumar et al. 2024, "Scaling Laws for Precision", https://arxiv.org/abs/2411.04324: the loss from
post-training quantization falls with parameters and grows with training tokens; tokens per family in
profiles/data/quality_published.yaml ``training_tokens``; it replaced a Llama-3 indicator),
fitted by ridge regression in closed form (numpy; cheap enough to fit when the catalog loads, so it
never goes stale against the data). Losses below 0.1% are floored there (0.1% reads as "at most
0.1%"). Rows: every single-component published row, plus the small model trained and measured by
``measurement.quality`` (family ``small``). The interval is the 90% quantile of leave-one-paper-out
log residuals of the (family, method) pairs no other paper holds (the only pairs the quality model asks it
for), so it reflects how well the regression carries to a family it has not seen.
"""
from __future__ import annotations

import math

import numpy as np

from . import conformal
from .candidate import DROP_LAYERS
from .quality_rows import training_tokens_t

FLOOR = 1e-3
SCORE = "score"


class QualityRegressor:
    """Ridge on one-hot method/metric features plus continuous terms (scikit-learn conventions:
    hyperparameters in ``__init__``, ``fit`` returns self, learned state ends in ``_``)."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def get_params(self, deep: bool = True) -> dict:
        return {"alpha": self.alpha}

    def _x(self, rows) -> np.ndarray:
        X = np.zeros((len(rows), len(self.columns_)))
        for i, r in enumerate(rows):
            for k, v in _feats(r).items():
                j = self.index_.get(k)
                if j is not None:
                    X[i, j] = v
        return X

    def fit(self, rows, y=None):
        cols = sorted({k for r in rows for k in _feats(r)})
        self.columns_ = cols
        self.index_ = {c: i for i, c in enumerate(cols)}
        X = self._x(rows)
        t = np.log(np.maximum([r.loss for r in rows], FLOOR))
        self.mean_ = t.mean()
        A = X.T @ X + self.alpha * np.eye(X.shape[1])
        self.coef_ = np.linalg.solve(A, X.T @ (t - self.mean_))
        self.methods_ = {r.component for r in rows}
        return self

    def predict(self, rows) -> np.ndarray:
        return np.exp(self.mean_ + self._x(rows) @ self.coef_)


def _feats(r) -> dict:
    comp = r.component
    f = {f"m:{comp[0]}:{comp[1]}": 1.0, "metric:score": 1.0 if _kind(r.metric) == SCORE else 0.0,
         "log_size": math.log(r.size_b) if r.size_b else 0.0, "small": 1.0 if r.family == "small" else 0.0}
    # the data term of the size law: log pre-training tokens (Kumar et al. 2024: the loss from post-training
    # quantization grows with the tokens a model was trained on); a family that does not state them gets an
    # indicator instead, so its rows neither set nor borrow the slope
    if r.family != "small":
        d = training_tokens_t(r.family, r.size_b)
        if d is not None:
            f["log_train_tokens"] = math.log(d)
        else:
            f["train_tokens_unknown"] = 1.0
    if comp[0] == "kv" and r.budget:
        f[f"budget:{comp[1]}"] = math.log2(r.budget / 1024)
    if comp == ("sparsity", DROP_LAYERS) and r.budget:
        f["drop_frac"] = r.budget / 1000
    return f


def _kind(metric: str) -> str:
    return "ppl" if "ppl" in metric else SCORE


def fit_with_interval(rows, alpha: float = 1.0, coverage: float = 0.9):
    """The fitted regressor and the ``coverage`` quantile of leave-one-source-out |log residual| (cached
    by the content of the rows: the leave-one-source-out loop is the slow part)."""
    from profiles import cache

    rows = [r for r in rows if r.size_b or r.family == "small"]
    if len(rows) < 20:
        return None, None
    key = cache.digest(repr([(sorted(_feats(r).items()), r.loss, r.cite, r.family) for r in rows]), str(alpha),
                       str(coverage), "finite-sample conformal rank", f"novel (family, method) residuals, {MIN_NOVEL}")
    hit = cache.get("quality-fit", key)
    if hit is not None:
        m = QualityRegressor(alpha)
        m.columns_, m.mean_, m.coef_ = hit["columns"], hit["mean"], np.array(hit["coef"])
        m.index_ = {c: i for i, c in enumerate(m.columns_)}
        m.methods_ = {tuple(x) for x in hit["methods"]}
        return m, hit["q"]
    m, q = _fit_with_interval(rows, alpha, coverage)
    cache.put("quality-fit", key, {"columns": m.columns_, "mean": float(m.mean_), "coef": m.coef_.tolist(),
                                   "methods": sorted(m.methods_), "q": q})
    return m, q


MIN_NOVEL = 20  # held-out residuals of novel (family, method) pairs needed to calibrate on them alone


def _fit_with_interval(rows, alpha: float, coverage: float):
    """The regression and its interval: the split-conformal quantile of leave-one-source-out |log residual|
    over the rows whose (family, method) the other sources do not hold, where there are MIN_NOVEL of them.
    The quality model asks the regression only for such pairs (a family with rows of the method answers from
    them), and those residuals run larger than the rest (k = 8.2 vs 4.5 on the seventeenth session's rows), so
    calibrating on every row would give the intervals it serves too narrow (Mondrian conformal by novelty)."""
    sources = sorted({r.cite for r in rows})
    res, novel = [], []
    for s in sources:
        train = [r for r in rows if r.cite != s]
        test = [r for r in rows if r.cite == s]
        if len(train) < 20:
            continue
        m = QualityRegressor(alpha).fit(train)
        seen = {(r.family, r.component) for r in train}
        known = [r for r in test if r.component in m.methods_]
        if known:
            p = m.predict(known)
            for pi, r in zip(p, known):
                e = abs(math.log(pi) - math.log(max(r.loss, FLOOR)))
                res.append(e)
                if (r.family, r.component) not in seen:
                    novel.append(e)
    calib = novel if len(novel) >= MIN_NOVEL else res
    q = conformal.quantile(calib, coverage) if calib else 1.0
    return QualityRegressor(alpha).fit(rows), q
