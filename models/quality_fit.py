"""A learned quality model: one regression over published and measured rows together.

log(loss) = method effect + metric-kind effect + size slope + pre-training-tokens slope + budget / depth terms
(the size law of Kumar et al. 2024, "Scaling Laws for Precision", https://arxiv.org/abs/2411.04324: the loss from
post-training quantization falls with parameters and grows with training tokens; tokens per family in
profiles/data/quality_published.yaml ``training_tokens``; it replaced a Llama-3 indicator),
fitted by ridge regression in closed form (numpy; cheap enough to fit when the catalog loads, so it
never goes stale against the data). Losses below 0.1% are floored there (0.1% reads as "at most
0.1%"). Rows: every single-component published row, plus the small model trained and measured by
``measurement.quality`` (family ``small``). The interval is the 90% quantile of leave-one-paper-out
log residuals, so it reflects how well the regression carries to a source it has not seen.
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
    key = cache.digest(repr([(sorted(_feats(r).items()), r.loss, r.cite) for r in rows]), str(alpha), str(coverage),
                       "finite-sample conformal rank")
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


def _fit_with_interval(rows, alpha: float, coverage: float):
    sources = sorted({r.cite for r in rows})
    res = []
    for s in sources:
        train = [r for r in rows if r.cite != s]
        test = [r for r in rows if r.cite == s]
        if len(train) < 20:
            continue
        m = QualityRegressor(alpha).fit(train)
        known = [r for r in test if r.component in m.methods_]
        if known:
            p = m.predict(known)
            res += [abs(math.log(pi) - math.log(max(r.loss, FLOOR))) for pi, r in zip(p, known)]
    q = conformal.quantile(res, coverage) if res else 1.0
    return QualityRegressor(alpha).fit(rows), q
