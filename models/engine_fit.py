"""Fitting the engine cost model (:mod:`models.engine_speed`) on published and measured engine rows.

Per engine, the kernel efficiencies and fixed costs are a maximum-a-posteriori fit in log space: the
residuals are ``log(predicted / reported)`` of every row plus a Gaussian prior on each log parameter
(``engine_speed.PARAM_PRIORS``), so a kernel with few rows stays near physically plausible values.
Intervals are split-conformal: the 90% quantile of leave-one-source-out |log residuals| per metric group
(decode, prefill, throughput), widened when a query uses a kernel, or a kernel on an architecture, that no
row of the engine covers. Validation (:func:`models.engine_validate.validate_engine`) holds out whole
sources and computes each held-out source's interval from the other sources only (nested).
"""
from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from profiles import Catalog, load

from . import engine_speed as es
from .engine_design import Design, design, kv_of, precision_of  # noqa: F401 - the fit's inputs, re-exported
from .engine_intervals import conformal_q, kernel_gpus, row_kinds
from .fd_jacobian import grouped_jacobian

PARAMS_PATH = Path(__file__).resolve().parent / "data" / "engine_params.json"
INNER_FOLDS = 4  # nested validation: the held-out source's interval from 4 source-folds of the other sources


def engines_fitted(cat: Catalog | None = None) -> tuple[str, ...]:
    """The engines this cost model is fitted for: every serving engine of the catalog (the harness engine's
    speed model is fitted on the harness's own rows, models/fitted.py)."""
    cat = cat or load()
    return tuple(e.id for e in cat.engines.values() if not e.runs_everything)


# ---------------------------------------------------------------------------------------------- fitting
ARCH_PARAMS = ("e_bw", "e_pre", "layer_us", "r_gemm")   # per (kernel, GPU) offsets around the kernel's values
ARCH_SIGMA, ARCH_BOUND = 0.7, 1.5    # prior sd and bound of a log offset
# A kernel's fixed cost per layer is a matter of the host, the driver and the engine build (CUDA graphs or
# not, kernel fusion) as much as of the GPU: published rows span builds whose launch overheads differ by
# an order of magnitude, so its offset per GPU is left wider than the efficiencies'.
ARCH_WIDE = {"layer_us": (1.5, 3.0)}
# An engine that runs another engine's kernels (engines.yaml ``kernel_priors_from``) starts from that engine's fitted
# efficiencies: each shared kernel's parameters, its per-GPU offsets, and the engine-wide attention and KV-cache
# efficiencies become prior means with a standard deviation of SHARED_SIGMA in log space (a factor of 1.16), where the
# sibling's rows outnumber its own (SGLang: 46 decode rows from 10 sources beside vLLM's 155). Its fixed costs (host,
# serving loop, per request, per chunk) keep the generic priors: those are the engine's own code. 0.15 was chosen on
# SGLang's leave-one-source-out decode error: 13.2% at 0.15, 15.3% at 0.3 on this data (0.6 and 1.0, tried on the
# 153 rows before 2026-12-02's collection, did worse than 0.3); a hyperparameter picked on validation rows, so said.
SHARED_ENGINE_PARAMS = ("e_kv", "e_attn")
SHARED_SIGMA = 0.15
B_SM_START = 4.0  # bytes per SM cycle where each kernel's b_sm starts the fit (fit_params)


def _layout(kernels, kernel_archs=()) -> list[tuple]:
    """Parameter slots: the engine's; each kernel's own (today's kernel of every earlier build's too); per
    (today's kernel, GPU) offsets."""
    ks = sorted(set(kernels) | {es.base_kernel(k) for k in kernels})
    pairs = sorted({(es.base_kernel(k), a) for k, a in kernel_archs})
    return ([(p, None, None) for p in es.ENGINE_PARAMS] + [(p, k, None) for k in ks for p in es.own_params(k)]
            + [(p, k, a) for k, a in pairs for p in ARCH_PARAMS])


def _unpack(theta, layout) -> dict:
    params: dict = {"kernels": {}, "arch": {}}
    for v, (p, k, a) in zip(theta, layout):
        if k is None:
            params[p] = float(math.exp(v))
        elif a is None:
            params["kernels"].setdefault(k, {})[p] = float(math.exp(v))
        else:
            params["arch"].setdefault(f"{k}@{a}", {})[p] = float(math.exp(v))
    return params


def _row_params(theta, layout, d: Design, _idx: dict | None = None) -> dict:
    """Per-row parameter arrays for the rows of ``d`` (vectorized gathers; ``_idx`` from :func:`_index`)."""
    ix = _idx or _index(layout, d)
    th = np.exp(np.asarray(theta, float))
    out = {p: th[i] for p, i in ix["engine"].items()}
    for p, (slots, rows) in ix["kernel"].items():
        vals = np.append(th[slots], es.PARAM_PRIORS[p][0])  # last: a kernel with no slot
        out[p] = vals[rows]
    for p, (slots, rows) in ix["pair"].items():
        mult = np.append(th[slots], 1.0)
        out[p] = np.minimum(out[p] * mult[rows], es.PARAM_PRIORS[p][3])
    return out


def _index(layout, d: Design) -> dict:
    eng = {p: i for i, (p, k, a) in enumerate(layout) if k is None}
    kernels = sorted({k for _, k, a in layout if k is not None and a is None})
    kpos = {k: j for j, k in enumerate(kernels)}
    krow = np.array([kpos.get(k, len(kernels)) for k in d.kernel], int)
    where = {x: i for i, x in enumerate(layout)}
    kern = {}
    for p in es.KERNEL_PARAMS:
        # an earlier build's kernel reads today's kernel's slot (always in the layout) for what it does not fit itself
        slots = np.array([where[(p, k if p in es.own_params(k) else es.base_kernel(k), None)] for k in kernels], int)
        kern[p] = (slots, krow)
    pairs = sorted({(k, a) for _, k, a in layout if a is not None})
    ppos = {pa: j for j, pa in enumerate(pairs)}
    prow = np.array([ppos.get((es.base_kernel(k), g), len(pairs)) for k, g in zip(d.kernel, d.gpu)], int)
    pair = {}
    for p in ARCH_PARAMS:
        slots = np.array([where[(p, k, a)] for k, a in pairs], int)
        pair[p] = (slots, prow)
    return {"engine": eng, "kernel": kern, "pair": pair}


def _support(layout, idx: dict, n: int) -> list[np.ndarray]:
    """The rows each parameter slot can move (from :func:`_index`): every row for the engine's, the rows of the
    kernels that read it for a kernel's (an earlier build's kernel reads some of today's), a (kernel, GPU) pair's
    rows for its offsets."""
    masks = [None] * len(layout)
    for part in ("kernel", "pair"):
        for slots, rows in idx[part].values():
            for j, s in enumerate(slots):
                m = rows == j
                masks[s] = m if masks[s] is None else masks[s] | m
    return [np.arange(n) if m is None else np.flatnonzero(m) for m in masks]


def predict_design(params: dict, d: Design) -> np.ndarray:
    rows = [es.row_params(params, k, g) for k, g in zip(d.kernel, d.gpu)]
    p = {k: params.get(k, es.PARAM_PRIORS[k][0]) for k in es.ENGINE_PARAMS}
    for name in es.KERNEL_PARAMS:
        p[name] = np.array([r[name] for r in rows])
    return es.metric_values(d.a, p, d.metric, d.batch, d.prompt, d.gen, d.depth, d.ctx)


def _shared_mean(shared: dict, p: str, k, a):
    """The sibling engine's fitted value of slot (p, k, a) where it fits one (None otherwise)."""
    if k is None:
        return shared.get(p) if p in SHARED_ENGINE_PARAMS else None
    if a is None:
        return (shared.get("kernels", {}).get(k) or {}).get(p)
    return (shared.get("arch", {}).get(f"{k}@{a}") or {}).get(p)


def fit_params(d: Design, prior_weight: float = 1.0, shared: dict | None = None) -> dict:
    """MAP estimate of the engine's parameters on the rows of ``d`` (priors alone when it is empty). ``shared``: the
    fitted parameters of the engine whose kernels this one runs (:func:`sibling_of`), as prior means."""
    from scipy.optimize import least_squares

    kernels = sorted(set(d.kernel))
    layout = _layout(kernels, sorted(set(zip(d.kernel, d.gpu))))
    mu = np.array([0.0 if a else math.log(es.PARAM_PRIORS[p][0]) for p, _, a in layout])
    sd_b = {p: ARCH_WIDE.get(p, (ARCH_SIGMA, ARCH_BOUND)) for p in ARCH_PARAMS}
    sig = np.array([sd_b[p][0] if a else es.PARAM_PRIORS[p][1] for p, _, a in layout])
    for i, (p, k, a) in enumerate(layout if shared else ()):
        v = _shared_mean(shared, p, k, a)
        if v is not None:
            mu[i], sig[i] = math.log(v), min(sig[i], SHARED_SIGMA)
    lo = np.array([-sd_b[p][1] if a else math.log(es.PARAM_PRIORS[p][2]) for p, _, a in layout])
    hi = np.array([sd_b[p][1] if a else math.log(es.PARAM_PRIORS[p][3]) for p, _, a in layout])
    if not len(d):
        return _unpack(mu, layout)
    logy = np.log(d.y)
    m = d.metric.astype(str)

    idx = _index(layout, d)

    def resid(theta):
        pred = es.metric_values(d.a, _row_params(theta, layout, d, idx), m, d.batch, d.prompt, d.gen, d.depth, d.ctx)
        r = np.log(np.maximum(pred, 1e-30)) - logy
        return np.concatenate([r, prior_weight * (theta - mu) / sig])

    x0 = mu.copy()
    # every kernel's SM bound starts where it binds: far from it, on the bandwidth-bound side, the soft maximum
    # leaves it no gradient, and the fit would never see rows that it explains (from there it rises until it
    # stops binding where the rows do not ask for it)
    x0[[i for i, (p, k, a) in enumerate(layout) if p == "b_sm" and a is None]] = math.log(B_SM_START)
    jac = grouped_jacobian(resid, _support(layout, idx, len(d)), len(d), lo, hi)
    sol = least_squares(resid, np.clip(x0, lo + 1e-9, hi - 1e-9), jac=jac, bounds=(lo, hi), method="trf",
                        x_scale=1.0, max_nfev=int(__import__("os").environ.get("ADVISOR_FIT_NFEV", 100)))
    return _unpack(sol.x, layout)


def _groups(d: Design) -> np.ndarray:
    return es.metric_groups(d.metric, d.gen)


def _group(d: Design, by: str) -> np.ndarray:
    return d.model if by == "model" else d.source


def loso_log_residuals(d: Design, folds: int | None = None, by: str = "source", shared: dict | None = None,
                       sibling: Design | None = None) -> np.ndarray:
    """log(predicted / reported) of every row from a fit that never saw the row's source (NaN where the
    source is the only one). ``folds``: hold out sources in that many groups instead of one by one. ``shared``:
    :func:`fit_params`' sibling prior (fitted without the caller's held-out group); ``sibling``: the sibling's rows,
    its prior refitted without each fold's groups instead."""
    return loso(d, folds, by, shared, sibling)[0]


def loso(d: Design, folds: int | None = None, by: str = "source", shared: dict | None = None,
         sibling: Design | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`loso_log_residuals` and each row's kind of evidence against its fold's training rows
    (:func:`models.engine_intervals.row_kinds`: measured, published, or novel where the fold has no row of the
    row's kernel on its GPU), for Mondrian intervals."""
    out = np.full(len(d), np.nan)
    kinds = np.array(d.kind, dtype=object)
    key = _group(d, by)
    srcs = sorted(set(key))
    groups = [srcs[i::folds] for i in range(folds)] if folds and folds < len(srcs) else [[s] for s in srcs]
    for grp in groups:
        te = np.isin(key, grp)
        if te.all() or not te.any():
            continue
        tr = d.take(~te)
        pr = fit_params(tr, shared=sibling_prior(sibling, grp, by) if sibling is not None else shared)
        out[te] = np.log(predict_design(pr, d.take(te))) - np.log(d.y[te])
        kinds[te] = row_kinds(d.kind[te], d.kernel[te], d.gpu[te], kernel_gpus(tr.kernel, tr.gpu))
    return out, kinds


def measured_gpus(d: Design) -> list[str]:
    """GPUs this project measured the engine on (their queries get the measured rows' interval)."""
    return sorted(set(d.gpu[d.kind == "measured"]))


def domain_of(d: Design) -> dict:
    dom: dict = {}
    for k, a in zip(d.kernel, d.arch):
        dom.setdefault(k, set()).add(a)
    return {k: sorted(v) for k, v in dom.items()}


# --------------------------------------------------------------------------------------- ship / load
def sibling_of(cat: Catalog, engine: str) -> str | None:
    """The engine whose fitted kernel efficiencies are ``engine``'s priors (engines.yaml ``kernel_priors_from``)."""
    return cat.engines[engine].get("kernel_priors_from")


def sibling_prior(sib: Design | None, held_out=None, by: str = "source") -> dict | None:
    """The sibling engine's fit as a prior, on its rows outside the groups ``held_out`` (so that validation never
    sees a held-out source through the sibling's rows of it); None without a sibling."""
    if sib is None:
        return None
    keep = ~np.isin(_group(sib, by), list(held_out or ()))
    return fit_params(sib.take(keep))


def fit_all(df, cat: Catalog | None = None, engines=None) -> dict:
    """Parameters, interval quantiles and domain of every engine (None: :func:`engines_fitted`), as the JSON
    the product loads."""
    cat = cat or load()
    engines = engines_fitted(cat) if engines is None else engines
    doc = {"schema_version": 1, "fitted_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "engines": {}}
    for e in engines:
        d = design(df, e, cat)
        sib = sibling_of(cat, e)
        sib_d = design(df, sib, cat) if sib else None
        shared = sibling_prior(sib_d)
        params = fit_params(d, shared=shared)
        res, kinds = loso(d, sibling=sib_d) if len(set(d.source)) > 1 else (np.full(len(d), np.nan), d.kind)
        snap = hashlib.sha256(df[df["engine"] == e].to_csv(index=False).encode()).hexdigest()[:12]
        doc["engines"][e] = {"params": params, "kernel_priors_from": sib, "q90": conformal_q(res, _groups(d), kinds), "domain": domain_of(d),
                             "kernel_gpus": kernel_gpus(d.kernel, d.gpu),
                             "rows": int(len(d)), "sources": sorted(set(d.source)), "snapshot": snap,
                             "skipped": d.skipped, "gpus": sorted(set(d.gpu)),
                             "measured_gpus": measured_gpus(d)}
    return doc


def save(doc: dict, path: Path = PARAMS_PATH) -> Path:
    from profiles.cache import write_text_atomic
    path = Path(path)
    write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True))
    return path


_CACHE: dict = {}


def load_params(path: Path = PARAMS_PATH) -> dict:
    """The shipped engine parameters (cached), or priors for every engine when none were fitted."""
    key = str(path)
    if key not in _CACHE:
        if Path(path).exists():
            _CACHE[key] = json.loads(Path(path).read_text())
        else:
            _CACHE[key] = {"schema_version": 1, "engines": {}}
    return _CACHE[key]


if __name__ == "__main__":  # python -m models.engine_fit: refit and write models/data/engine_params.json
    from measurement.engine_rows import load_engine_rows

    doc = fit_all(load_engine_rows())
    print(save(doc))
    for e, v in doc["engines"].items():
        print(e, v["rows"], "rows,", len(v["sources"]), "sources; q90",
          {k: round(x, 3) if isinstance(x, float) else {g: round(y, 3) for g, y in x.items()}
           for k, x in v["q90"].items()})
