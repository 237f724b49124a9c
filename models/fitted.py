"""Fitting the cost model on the measured dataset (scikit-learn), validation, and persistence.

``CorrectionRegressor`` is a scikit-learn estimator (``fit`` returns self, learned state in ``*_``):
ridge regression on standardized features, target ``log(measured / analytical)``. It is saved as
JSON (coefficients, scaler, conformal quantile) with a sidecar of data snapshot id, versions and CV
scores; :mod:`models.correction` evaluates it without scikit-learn.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import Ridge

from profiles import Catalog, load

from . import conformal
from .candidate import DEFAULT_KV, Scenario
from .correction import FEATURES, TARGETS, WIDEN, FittedCostModel, domain_of, features
from .measured_rows import SUPERSEDED_COMPILE_MODES, row_candidate, usable_rows  # noqa: F401 (re-exported)
from .memory import predict_memory
from .speed import predict_speed
from .energy import board_power_w, joules_per_token

# Ridge strength chosen on held-out error (advisor validate; 88-row dataset, alpha in 1..1000: 100; rechecked
# on the 199-row dataset, alpha 10/30/100/300/1000: leave-one-model-out decode MAPE 9.0/8.5/7.8/7.8/8.3%).
DEFAULT_ALPHA = 100.0
# How much of the fitted correction a prediction applies (log space): chosen per target by the training rows'
# own out-of-group error, so a correction that does not carry over to unseen groups is damped or dropped.
SHRINK_GRID = (0.0, 0.5, 1.0)
# Fewest held-out residuals of one backend for its own interval quantile (conformal_q): with 19 the 90% rank
# ceil((n + 1) x 0.9) is the largest residual; from 20 on it is a proper order statistic.
MONDRIAN_MIN = 20


class CorrectionRegressor(RegressorMixin, BaseEstimator):
    """Ridge on standardized features; predicts log(measured / analytical)."""

    def __init__(self, alpha: float = DEFAULT_ALPHA):
        self.alpha = alpha

    def fit(self, X, y):
        from sklearn.utils.validation import validate_data
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale == 0] = 1.0
        self.scale_ = scale
        r = Ridge(alpha=self.alpha).fit((X - self.mean_) / self.scale_, y)
        self.coef_, self.intercept_ = r.coef_, r.intercept_
        return self

    def predict(self, X):
        from sklearn.utils.validation import check_is_fitted, validate_data
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return ((X - self.mean_) / self.scale_) @ np.asarray(self.coef_).T + self.intercept_

    def to_dict(self, q90: float, shrink: float = 1.0, q90_by_backend: dict | None = None) -> dict:
        return {"coef": np.asarray(self.coef_).tolist(), "intercept": float(np.ravel(self.intercept_)[0]),
                "mean": self.mean_.tolist(), "scale": self.scale_.tolist(), "q90": q90, "alpha": self.alpha,
                "shrink": shrink, "q90_by_backend": q90_by_backend or {}}


def design(df, cat: Catalog | None = None, constants: dict | None = None):
    """Feature matrix, analytical predictions, measured targets, the kept row labels, and per kept row
    (gpu id, cc major, params_b, precision, sparsity, backend, model id, kv): what the interval widening looks at.
    ``constants``: the harness speed model's measured constants (default the shipped ones; models/harness_fit.py)."""
    cat = cat or load()
    X, A, Y, keep, meta = [], [], [], [], []
    for i, r in df.iterrows():
        try:
            gpu, llm = cat.gpu(str(r["gpu"])), cat.llm(str(r["model"]))
            cand = row_candidate(r)
            sc = Scenario(int(r["batch"]), int(r["prompt_len"]), int(r["gen_len"]), str(r["backend"]), 1)
            spd = predict_speed(cat, gpu, llm, cand, sc, constants)
            mem = predict_memory(cat, llm, cand, sc)
        except (LookupError, KeyError, ValueError, TypeError):
            continue
        step = spd.decode_step_ms.value
        power = board_power_w(gpu, spd.memory_floor_ms / step, spd.compute_floor_ms / step,
                              u_kv=spd.kv_floor_ms / step)
        jpt = joules_per_token(power, spd.decode_step_ms.value / 1e3, sc.batch)
        cm = r.get("compile_mode")
        X.append(features(gpu, llm, cand, sc, spd.utilisation, cm if isinstance(cm, str) else None))
        A.append([spd.decode_step_ms.value, spd.prefill_ms.value, mem.per_gpu_gb.value, jpt])
        Y.append([r.get("decode_ms_per_token"), r.get("prefill_ms"), r.get("peak_mem_gb"), r.get("j_per_token")])
        keep.append(i)
        meta.append((gpu.id, gpu.cc[0], llm.published_params_b, cand.precision, cand.sparsity, sc.backend, llm.id,
                     cand.kv))
    return np.array(X), np.array(A, float), np.array(Y, float), keep, meta


def refit_analytical(sub, cat: Catalog | None = None, evidence: list | None = None):
    """For cross-validation: a function of a training mask over the rows of ``sub`` (design's kept rows, in
    order) -> (X, A) of every row, recomputed with the harness constants fitted by models/harness_fit.py on
    the masked rows only, so a fold's analytical predictions never rest on its held-out rows. Each fold's
    evidence dict (what each constant rested on) is appended to ``evidence`` when given."""
    from .harness_fit import fit_constants
    cat = cat or load()

    def refit(tr):
        ev: dict = {}
        c = fit_constants(sub.iloc[np.flatnonzero(tr)], cat, ev)
        X, A, _, keep, _ = design(sub, cat, c)
        if list(keep) != list(sub.index):
            raise ValueError("refit_analytical: the rows must be design's kept rows")
        if evidence is not None:
            evidence.append(ev)
        return X, A
    return refit


def _groups_cv(groups: np.ndarray, k: int = 5, min_groups: int = 3):
    """Leave one group out when there are at least ``min_groups`` groups, else k-fold."""
    uniq = sorted(set(groups))
    if len(uniq) >= min_groups:
        for g in uniq:
            yield groups != g, groups == g
    else:
        idx = np.arange(len(groups))
        for f in range(k):
            test = idx % k == f
            yield ~test, test


def _oof_log_corrections(X, y, groups, alpha: float, min_groups: int) -> np.ndarray:
    """Each row's log correction predicted by a model that never saw its group (or fold); NaN where no fold
    could fit one."""
    out = np.full(len(y), np.nan)
    for tr, te in _groups_cv(groups, min_groups=min_groups):
        if tr.sum() < 5 or te.sum() == 0:
            continue
        out[te] = CorrectionRegressor(alpha).fit(X[tr], y[tr]).predict(X[te])
    return out


def select_shrink(X, y, groups, alpha: float, min_groups: int = 3, oof=None) -> float:
    """The fraction of the correction (SHRINK_GRID) to apply, from the out-of-group predictions of these rows:
    each share's error is the mean over groups of its rows' mean absolute percentage error (groups, not rows,
    are the independent units), and the smallest share within one standard error (over groups) of the best is
    chosen (the one-standard-error rule, Hastie, Tibshirani & Friedman, Elements of Statistical Learning, 2nd ed.,
    section 7.10): a correction that helps on average but not reliably across groups is damped. 1.0 when no
    fold could be held out."""
    oof = _oof_log_corrections(X, y, groups, alpha, min_groups) if oof is None else oof
    ok = np.isfinite(oof)
    if not ok.any():
        return 1.0
    g = np.asarray(groups)[ok]
    uniq = sorted(set(g))
    # per group, its rows' mean error at each share: groups, not rows, are the independent units
    per = np.array([[float(np.mean(np.abs(np.exp(y[ok][g == k] - s * oof[ok][g == k]) - 1))) for k in uniq]
                    for s in SHRINK_GRID])
    errs = per.mean(axis=1)
    best = int(np.argmin(errs))
    se = float(np.std(per[best], ddof=1) / math.sqrt(len(uniq))) if len(uniq) > 1 else 0.0
    # one-standard-error rule: the smallest share within one standard error of the best
    return next(s for s, e in zip(SHRINK_GRID, errs) if e <= errs[best] + se)


def conformal_q(X, y, groups, alpha: float, min_groups: int = 3, shrink: float = 1.0, oof=None,
                backends=None) -> float | dict:
    """90% quantile of out-of-group |log residuals| of the correction applied at ``shrink`` (split-conformal on
    grouped folds). With ``backends`` (each row's harness backend), a dict: ``{"all": pooled, backend: its own}``
    for every backend with at least MONDRIAN_MIN residuals (Mondrian conformal prediction, Vovk, Gammerman and Shafer,
    Algorithmic Learning in a Random World, 2005, ch. 4.5; Angelopoulos and Bates 2021, section 4.5): an eager step is
    host-bound and its residuals are several times a compiled step's, so one pooled quantile under-covers the one and
    over-covers the other."""
    oof = _oof_log_corrections(X, y, groups, alpha, min_groups) if oof is None else oof
    r = np.abs(y - shrink * oof)
    ok = np.isfinite(r)
    pooled = conformal.quantile(r[ok]) if ok.any() else 0.5
    if backends is None:
        return pooled
    b = np.asarray(backends)
    out = {"all": pooled}
    for k in sorted(set(b[ok])):
        rk = r[ok & (b == k)]
        if len(rk) >= MONDRIAN_MIN:
            out[str(k)] = conformal.quantile(rk)
    return out


def q_of(q: float | dict, backend: str) -> float:
    """The quantile a query of ``backend`` takes: its own class's where it had enough residuals, else the pooled one."""
    return q if not isinstance(q, dict) else q.get(backend, q["all"])


def backends_of(meta, n: int) -> np.ndarray:
    """Each design row's harness backend (eager / compiled), from :func:`design`'s meta."""
    return np.array([m[5] for m in meta]) if meta is not None else np.full(n, "")


def _widen(meta, tr, te) -> np.ndarray:
    """Per test row, the product's interval widening (FittedCostModel.far_reasons) against the domain of
    the training rows: a held-out row of a GPU, method or size the fold never saw gets the wider interval
    a user's query of it would get."""
    dom = FittedCostModel({"features": list(FEATURES), "targets": {},
                           "domain": domain_of([meta[i] for i in np.flatnonzero(tr)])})
    w = np.ones(int(te.sum()))
    for k, i in enumerate(np.flatnonzero(te)):
        g, cc, params, prec, spars, backend, model, *kv = meta[i]
        for kind, _ in dom.far_reasons_of(g, cc, model, params, prec, spars, backend, kv=kv[0] if kv else DEFAULT_KV):
            w[k] *= WIDEN[kind]
    return w


def cross_val(X, A, Y, groups, alpha: float = DEFAULT_ALPHA, min_groups: int = 3, meta=None, refit=None) -> dict:
    """Out-of-group predictions for every target. Each outer fold's interval comes from a conformal
    quantile computed inside its own training rows only (nested), so coverage is honestly held out;
    with ``meta`` (from :func:`design`) it is widened as the product widens it for a query outside the
    fold's training domain. With ``refit`` (:func:`refit_analytical`) each fold's features and analytical
    predictions come from harness constants fitted on its training rows (the inner conformal folds reuse the
    outer fold's constants); ``analytical`` holds the held-out analytical predictions."""
    folds = [(tr, te, *(refit(tr) if refit else (X, A))) for tr, te in _groups_cv(groups, min_groups=min_groups)]
    be = backends_of(meta, len(Y)) if meta is not None else None
    out = {}
    for j, t in enumerate(TARGETS):
        pred, lo, hi, ana = (np.full(len(Y), np.nan) for _ in range(4))
        for tr, te, Xf, Af in folds:
            ok = np.isfinite(Y[:, j]) & (Y[:, j] > 0) & np.isfinite(Af[:, j]) & (Af[:, j] > 0)
            tr, te = tr & ok, te & ok
            if tr.sum() < 5 or te.sum() == 0:
                continue
            logy = np.full(len(Y), np.nan)
            logy[ok] = np.log(Y[ok, j] / Af[ok, j])
            m = CorrectionRegressor(alpha).fit(Xf[tr], logy[tr])
            oof = _oof_log_corrections(Xf[tr], logy[tr], groups[tr], alpha, 2)
            s = select_shrink(Xf[tr], logy[tr], groups[tr], alpha, oof=oof)
            q = conformal_q(Xf[tr], logy[tr], groups[tr], alpha, shrink=s, oof=oof,
                            backends=be[tr] if be is not None else None)
            q = np.array([q_of(q, b) for b in be[te]]) if be is not None else q
            if meta is not None:
                q = q * _widen(meta, tr, te)
            p = Af[te, j] * np.exp(s * m.predict(Xf[te]))
            pred[te], lo[te], hi[te], ana[te] = p, p * np.exp(-q), p * np.exp(q), Af[te, j]
        out[t] = {"pred": pred, "true": Y[:, j], "lo": lo, "hi": hi, "analytical": ana}
    return out


def scores(cv: dict, backends=None) -> dict:
    """Per target: MAPE, median APE, 90% coverage and n of the held-out predictions; with ``backends`` (each row's,
    :func:`backends_of`) also ``by_backend``: the same per backend, each of which takes its own interval quantile."""
    res = {}
    for t, d in cv.items():
        ok = np.isfinite(d["pred"]) & np.isfinite(d["true"]) & (d["true"] > 0)
        if not ok.any():
            continue
        err = np.abs(d["pred"][ok] - d["true"][ok]) / d["true"][ok]
        cover = (d["lo"][ok] <= d["true"][ok]) & (d["true"][ok] <= d["hi"][ok])
        res[t] = {"mape": float(err.mean()), "median_ape": float(np.median(err)), "coverage90": float(cover.mean()),
                  "n": int(ok.sum())}
        if backends is not None:
            b = np.asarray(backends)[ok]
            res[t]["by_backend"] = {str(k): {"mape": float(err[b == k].mean()), "coverage90": float(cover[b == k].mean()),
                                             "n": int((b == k).sum())} for k in sorted(set(b))}
        if "analytical" in d:  # the analytical model's held-out error on the same rows
            res[t]["analytical_held_out_mape"] = float((np.abs(d["analytical"][ok] - d["true"][ok]) / d["true"][ok]).mean())
        if t == "decode_ms":  # the same predictions as tokens/s (batch / step time): |measured/predicted - 1|
            tok = np.abs(d["true"][ok] / d["pred"][ok] - 1)
            res[t]["tok_s_mape"], res[t]["tok_s_median_ape"] = float(tok.mean()), float(np.median(tok))
    return res


def fit_model(df, alpha: float = DEFAULT_ALPHA, cat: Catalog | None = None) -> dict:
    """Fit every target on all rows; conformal quantiles from leave-one-model-out residuals."""
    cat = cat or load()
    df = usable_rows(df)
    X, A, Y, keep, meta = design(df, cat)
    if len(X) < 10:
        raise ValueError(f"only {len(X)} usable measured rows: at least 10 are needed to fit")
    sub = df.loc[keep]
    groups = sub["model"].astype(str).to_numpy()
    cv = cross_val(X, A, Y, groups, alpha, meta=meta, refit=refit_analytical(sub, cat))
    targets = {}
    for j, t in enumerate(TARGETS):
        ok = np.isfinite(Y[:, j]) & (Y[:, j] > 0) & (A[:, j] > 0)
        if ok.sum() < 10:
            continue
        y = np.log(Y[ok, j] / A[ok, j])
        m = CorrectionRegressor(alpha).fit(X[ok], y)
        oof = _oof_log_corrections(X[ok], y, groups[ok], alpha, 3)
        s = select_shrink(X[ok], y, groups[ok], alpha, oof=oof)
        q = conformal_q(X[ok], y, groups[ok], alpha, shrink=s, oof=oof, backends=backends_of(meta, len(Y))[ok])
        targets[t] = m.to_dict(q["all"], s, {k: v for k, v in q.items() if k != "all"})
    snap = hashlib.sha256(sub.to_csv(index=False).encode()).hexdigest()[:12]
    doc = {
        "schema_version": 1,
        "features": list(FEATURES),
        "targets": targets,
        "domain": domain_of(meta),
        "snapshot": f"dataset {snap} ({len(sub)} rows)",
    }
    sidecar = {
        "snapshot_id": snap, "rows": len(sub), "fitted_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "numpy": np.__version__,
        "sklearn": __import__("sklearn").__version__, "alpha": alpha,
        "cv_leave_one_model_out": scores(cv),
    }
    return {"model": doc, "sidecar": sidecar}


def save(fitted: dict, path: Path) -> tuple[Path, Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from profiles.cache import write_text_atomic
    write_text_atomic(path, json.dumps(fitted["model"], indent=1))
    side = path.with_suffix(".meta.json")
    write_text_atomic(side, json.dumps(fitted["sidecar"], indent=1))
    FittedCostModel.load(path)  # round-trip check
    return path, side
