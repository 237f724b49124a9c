"""Held-out validation of the engine cost model (``advisor validate --engine``): every row predicted by a
fit without its group (its source, or its model), its 90% interval from the other groups' own held-out
residuals (nested), widened where the fold has no rows of the query's kernel or architecture. Scores per
metric group (decode, prefill, throughput): mean and median absolute percentage error, 90% coverage.
"""
from __future__ import annotations

import numpy as np

from .engine_fit import (INNER_FOLDS, Design, _group, _groups, domain_of, fit_params, loso, measured_gpus,
                         predict_design, sibling_prior)
from .engine_intervals import conformal_q, evidence_kind, kernel_gpus, q_for, widen_factor


def _score(pred, lo, hi, y, groups) -> dict:
    out = {}
    for g in ("decode", "prefill", "throughput", "all"):
        m = np.isfinite(pred) & ((groups == g) if g != "all" else True)
        if not m.any():
            continue
        ape = np.abs(pred[m] - y[m]) / y[m]
        cover = (lo[m] <= y[m]) & (y[m] <= hi[m])
        out[g] = {"n": int(m.sum()), "mape": float(ape.mean()), "median_ape": float(np.median(ape)),
                  "coverage90": float(cover.mean())}
    return out


def validate_engine(d: Design, nested: bool = True, by: str = "source", score=None, sibling: Design | None = None) -> dict:
    """Leave-one-group-out (``by`` source or model): every row predicted by a fit without its group; its 90%
    interval from the other groups' own held-out residuals (nested), widened by the fold's domain.
    ``score``: a mask of the rows to hold out and score (all rows still train the other folds). ``sibling``: the
    rows of the engine whose kernels this one runs (engines.yaml ``kernel_priors_from``); its prior is refitted
    without the held-out group in every fold."""
    groups = _groups(d)
    pred, lo, hi = (np.full(len(d), np.nan) for _ in range(3))
    key = _group(d, by)
    score = np.ones(len(d), bool) if score is None else np.asarray(score, bool)
    sources = sorted(set(key[score]))
    for s in sources:
        te = (key == s) & score
        if (key == s).all():
            continue
        tr = d.take(key != s)
        shared = sibling_prior(sibling, [s], by)
        pr = fit_params(tr, shared=shared)
        p = predict_design(pr, d.take(te))
        inner, kinds = (loso(tr, INNER_FOLDS, by, shared=shared) if nested
                        else (np.log(predict_design(pr, tr)) - np.log(tr.y), tr.kind))
        q = conformal_q(inner, _groups(tr), kinds)
        dom = domain_of(tr)
        # a row's interval is the one its kind of evidence earns, as the product decides for a query: measured
        # when the training folds hold measured rows of its GPU, novel when they hold no row of its kernel on
        # its GPU, else published
        mg, seen = set(measured_gpus(tr)), kernel_gpus(tr.kernel, tr.gpu)
        qq = np.array([q_for(q, g, evidence_kind(gpu, mg, k, seen)) * widen_factor(dom, k, a)[0]
                       for g, k, a, gpu in zip(groups[te], d.kernel[te], d.arch[te], d.gpu[te])])
        pred[te], lo[te], hi[te] = p, p * np.exp(-qq), p * np.exp(qq)
    res = {"rows": int(len(d)), "sources": len(set(d.source)), "held_out_groups": len(sources), "by": by,
           "skipped": d.skipped}
    for kind in ("published", "measured"):
        m = d.kind == kind
        if m.any():
            res[kind] = _score(pred[m], lo[m], hi[m], d.y[m], groups[m])
    res["all"] = _score(pred, lo, hi, d.y, groups)
    res["pairs"] = {"pred": pred.tolist(), "true": d.y.tolist(), "metric": d.metric.tolist(),
                    "source": d.source.tolist(), "gpu": d.gpu.tolist(), "kind": d.kind.tolist()}
    return res
