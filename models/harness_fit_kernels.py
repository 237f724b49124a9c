"""The harness speed model's kernel figures that used to be read off measured rows by hand, derived by code.

models/harness_fit.py's :func:`~models.harness_fit.fit_constants` calls :func:`fit_kernels` after the eager-host
and KV-read constants; each figure comes from the rows it is given only (inside a validation fold: the fold's
training rows), or a stated prior (KERNEL_PRIORS) where they hold no evidence. The constants (in the dict
models.speed.predict_speed takes):

- ``compiled_step_ms_per_layer`` and ``bw_compiled[bf16]``: least squares on log time over the FUSED batch-1 bf16
  rows (compile mode regional-graph-fused; dense, 16-bit cache), the two unknowns together (two model sizes);
- ``bw_compiled[p]``, ``layer_ms_compiled[p]`` for each precision whose harness_kernels.json ``fit`` names them:
  the same on its FUSED batch-1 rows, the bf16 constants fixed;
- ``sparse24`` (``bw_compiled``, ``row_factor``): least squares on log time over every FUSED 2:4 row (the hand
  derivation took the fraction over all of them and the row factor from batch 64 over 16: one fit here);
- ``int4_compiled_row_factor``: least squares on log time over the compiled rows above batch 1 of the methods whose
  kernels' compiled_batch_cost is row_factor (every compile mode: the hand derivation read unmerged H100 rows);
- ``int8wo_compiled_bytes_per_weight_per_row``: per compiled row above batch 1 of the methods whose
  compiled_batch_cost is weight_reread, the measured step time minus the model's without the re-read, times the
  copy bandwidth, over the linear weights times the batch: the median (the hand recipe);
- ``compute[p]`` for each precision whose ``fit`` names it: on its dense prefills of >= 8192 tokens, the fraction at
  which the median of analytical / measured prefill time is 1 (the hand recipe applied once the earlier fraction
  times that median; the code solves for the fixed point by bisection).

Methods whose ``kernels_of`` names another take that method's fitted figures. Where a fold's rows lack the evidence
for a method's figure, its prior comes from the kernel probes (measurement/data/kernel_probe, models/harness_probe.py:
one decoder layer's projections per method timed alone on an H200), transferred through the methods the fold did fit.
"""
from __future__ import annotations

import math
import statistics

import numpy as np
from scipy.optimize import least_squares

from profiles import Catalog

from . import efficiency as eff
from .candidate import DEFAULT_KV, DEFAULT_PRECISION, DEFAULT_SPARSITY
from .harness_probe import bw_prior, compute_prior, reread_prior, row_factor_prior, sparse24_sparsity
from .memory import param_counts
from .speed import _decode_time_s, _prefill_time_s

FUSED_MODE = "regional-graph-fused"  # measurement.dataset.DEFAULT_COMPILE_MODE: the FUSED rows
UNMERGED_MODE = "regional-graph"  # the unmerged backend: the step overhead's prior
PREFILL_MIN_TOKENS = 8192  # the PREFILL recipe's ">= 8192 tokens (batch x prompt)"
KERNEL_PRIORS = {
    "compiled_step_ms_per_layer": "no FUSED bf16 batch-1 row: fitted at the prior bf16 fraction on the unmerged "
                                  "regional-graph bf16 batch-1 rows; none: 0",
    "bw_compiled": "bf16 without FUSED batch-1 rows of two model sizes: its one-row kernel probe transferred from the "
                   "methods fitted on the rows (below), which are then fitted again, else PROBE's cuBLAS fraction "
                   "(harness_kernels.json prior); another method without FUSED batch-1 rows: its one-row kernel probe "
                   "at k times the probe's time, k the median model / probe time of the fitted methods' probes "
                   "(models/harness_probe.py bw_prior), else the median of the other methods' compiled fractions",
    "layer_ms_compiled": "FUSED batch-1 rows of one model size only, or none: 0 (the fraction alone is fitted)",
    "sparse24": "no FUSED 2:4 row: the 2:4 kernel probe at 16 rows transferred as the methods' (models/harness_probe.py"
                "; through bf16's prior fraction where no method is fitted), else PROBE's compiled fraction (15.4 / "
                "76.5 us), and row factor 0; no row above 16 rows: row factor 0",
    "int4_compiled_row_factor": "no compiled row above batch 1 of a row_factor method: the kernel probes' growth "
                                "with rows (models/harness_probe.py), else 0 (the one-row time)",
    "int8wo_compiled_bytes_per_weight_per_row": "no compiled row above batch 1 of a weight_reread method: the kernel "
                                                "probes' extra bytes per weight per row, else the stored bytes",
    "compute": "no dense prefill of >= 8192 tokens of the precision: its kernel probe plus the median extra time "
               "per FLOP of the fitted precisions over their probes (models/harness_probe.py compute_prior), else the "
               "median of the other precisions' fractions",
}
_X0_LAYER_MS = 0.01


def _median(v) -> float:
    return float(statistics.median(v))


def _set(c: dict, key: str, sub: str | None, value: float) -> dict:
    """A copy of ``c`` with c[key][sub] (or c[key]) = value."""
    return {**c, key: {**c[key], sub: value}} if sub is not None else {**c, key: value}


def _with_twins(c: dict, key: str, p: str, value: float) -> dict:
    """c[key][q] = value for p and every precision sharing p's kernels."""
    for q in eff.precisions():
        if q == p or eff.kernels_of(q) == p:
            c = _set(c, key, q, value)
    return c


def _pred_ms(cat: Catalog, r: dict, c: dict) -> float:
    return _decode_time_s(cat, r["gpu"], r["llm"], r["cand"], r["sc"], r["step"], [], c) * 1e3


def _lsq(cat: Catalog, rows: list[dict], c: dict, apply, x0, lo, hi) -> np.ndarray:
    """Parameters minimising the squared log error of the analytical decode time over ``rows``;
    ``apply(c, x)`` -> constants."""
    def res(x):
        cc = apply(c, x)
        return np.array([math.log(_pred_ms(cat, r, cc) / r["ms"]) for r in rows])
    return least_squares(res, np.clip(x0, lo, hi), bounds=(lo, hi), x_scale="jac").x


def _fitted_bw(c: dict, ev: dict) -> dict:
    """{precision: (compiled fraction, fixed ms per layer)} of the methods whose compiled fraction the rows fitted
    (evidence not a prior): what :func:`~models.harness_probe.bw_prior` transfers a probe through."""
    return {q: (eff.bw_fraction(q, "compiled", c), eff.layer_ms(q, "compiled", c)) for q in eff.precisions()
            if not ev.get(f"bw_compiled[{q}]", "prior").startswith("prior")}


def _compiled_b1(rows: list[dict], precision: str, mode: str = FUSED_MODE) -> list[dict]:
    return [r for r in rows if r["sc"].backend == "compiled" and r["cm"] == mode and r["sc"].batch == 1
            and r["cand"].precision == precision and r["cand"].sparsity == DEFAULT_SPARSITY
            and r["cand"].kv == DEFAULT_KV and r["cand"].kv_budget is None]


def _fit_bf16(cat, rows, c, ev) -> dict:
    p = DEFAULT_PRECISION
    prior = eff.kernel(p).get("prior", {}).get("bw.compiled", 1.0)
    b1 = _compiled_b1(rows, p)
    both = lambda cc, x: _with_twins(_set(cc, "compiled_step_ms_per_layer", None, x[1]), "bw_compiled", p, x[0])  # noqa: E731
    step = lambda cc, x: _set(cc, "compiled_step_ms_per_layer", None, x[0])  # noqa: E731
    c = _with_twins(c, "bw_compiled", p, prior)
    if len({r["llm"].id for r in b1}) >= 2:
        x = _lsq(cat, b1, c, both, [prior, 0.03], [0.05, 0.0], [3.0, 1.0])
        ev[f"bw_compiled[{p}]"] = ev["compiled_step_ms_per_layer"] = f"FUSED batch-1 bf16 rows: {len(b1)}"
        return both(c, x)
    ev[f"bw_compiled[{p}]"] = "prior: PROBE cuBLAS fraction"
    src = b1 or _compiled_b1(rows, p, UNMERGED_MODE)
    if not src:
        ev["compiled_step_ms_per_layer"] = "prior: 0"
        return step(c, [0.0])
    ev["compiled_step_ms_per_layer"] = (f"FUSED batch-1 bf16 rows of one model: {len(src)}, at the prior fraction"
                                        if b1 else f"prior: unmerged batch-1 bf16 rows: {len(src)}, prior fraction")
    return step(c, _lsq(cat, src, c, step, [0.03], [0.0], [1.0]))


def _fit_methods(cat, rows, c, ev) -> dict:
    """Compiled fraction and per-layer ms of each fitted method other than bf16 (bf16's constants fixed)."""
    todo = [p for p in eff.precisions() if p != DEFAULT_PRECISION and "bw.compiled" in eff.fitted_figures(p)]
    missing = []
    for p in todo:
        b1 = _compiled_b1(rows, p)
        lay = "layer_ms.compiled" in eff.fitted_figures(p)
        c = _with_twins(c, "layer_ms_compiled", p, 0.0) if lay else c
        if not b1:
            missing.append(p)
            continue
        if lay and len({r["llm"].id for r in b1}) >= 2:
            f = lambda cc, x, p=p: _with_twins(_with_twins(cc, "bw_compiled", p, x[0]), "layer_ms_compiled", p, x[1])  # noqa: E731
            c = f(c, _lsq(cat, b1, c, f, [0.5, _X0_LAYER_MS], [0.01, 0.0], [3.0, 1.0]))
            ev[f"bw_compiled[{p}]"] = ev[f"layer_ms_compiled[{p}]"] = f"FUSED batch-1 rows: {len(b1)}"
        else:
            f = lambda cc, x, p=p: _with_twins(cc, "bw_compiled", p, x[0])  # noqa: E731
            c = f(c, _lsq(cat, b1, c, f, [0.5], [0.01], [3.0]))
            ev[f"bw_compiled[{p}]"] = f"FUSED batch-1 rows: {len(b1)}"
            if lay:
                ev[f"layer_ms_compiled[{p}]"] = "prior: 0 (rows of one model size)"
    fitted = _fitted_bw(c, ev)
    for p in missing:
        tr = bw_prior(p, fitted)
        others = [eff.bw_fraction(q, "compiled", c) for q in eff.precisions()
                  if q not in missing and eff.kernels_of(q) not in missing and eff.kernels_of(q) == q]
        c = _with_twins(c, "bw_compiled", p, tr[0] if tr else _median(others))
        ev[f"bw_compiled[{p}]"] = tr[1] if tr else f"prior: median of {len(others)} other methods' compiled fractions"
        if "layer_ms.compiled" in eff.fitted_figures(p):
            ev[f"layer_ms_compiled[{p}]"] = "prior: 0"
    return c


def _fit_sparse24(cat, rows, c, ev) -> dict:
    s = [r for r in rows if r["sc"].backend == "compiled" and r["cm"] == FUSED_MODE
         and r["cand"].sparsity.startswith("2:4") and r["cand"].kv == DEFAULT_KV and r["cand"].kv_budget is None]
    prior = {"bw_compiled": eff.SPARSE_24["probe_bw_compiled"], "row_factor": 0.0}
    if not s:
        fitted = _fitted_bw(c, ev)
        # no fitted method: through bf16's dense figure, its prior (the 2:4 kernels are bf16's own, sparse)
        fitted = fitted or {DEFAULT_PRECISION: (eff.bw_fraction(DEFAULT_PRECISION, "compiled", c), 0.0)}
        sp = sparse24_sparsity()
        tr = bw_prior(DEFAULT_PRECISION, fitted, sparsity=sp, rows=16) if sp else None
        ev["sparse24"] = (tr[1] + " (16 rows), row factor 0") if tr else "prior: PROBE fraction, row factor 0"
        return {**c, "sparse24": {**prior, "bw_compiled": tr[0]} if tr else prior}
    if any(r["sc"].batch > 16 for r in s):
        f = lambda cc, x: {**cc, "sparse24": {"bw_compiled": x[0], "row_factor": x[1]}}  # noqa: E731
        x = _lsq(cat, s, c, f, [prior["bw_compiled"], 0.01], [0.005, 0.0], [3.0, 1.0])
        ev["sparse24"] = f"FUSED 2:4 rows: {len(s)}"
    else:
        f = lambda cc, x: {**cc, "sparse24": {"bw_compiled": x[0], "row_factor": 0.0}}  # noqa: E731
        x = _lsq(cat, s, c, f, [prior["bw_compiled"]], [0.005], [3.0])
        ev["sparse24"] = f"FUSED 2:4 rows: {len(s)} (row factor prior 0: none above 16 rows)"
    return f(c, x)


def _batch_rows(cat: Catalog, rows: list[dict], cost: str) -> list[dict]:
    """Compiled rows above batch 1 (dense, 16-bit cache) of the methods whose compiled_batch_cost is ``cost``."""
    return [r for r in rows if r["sc"].backend == "compiled" and r["sc"].batch > 1
            and (cat.methods[r["cand"].precision].get("kernels") or {}).get("compiled_batch_cost") == cost
            and r["cand"].sparsity == DEFAULT_SPARSITY and r["cand"].kv == DEFAULT_KV and r["cand"].kv_budget is None]


def _fit_row_costs(cat, rows, c, ev) -> dict:
    i4 = _batch_rows(cat, rows, "row_factor")
    f = lambda cc, x: _set(cc, "int4_compiled_row_factor", None, x[0])  # noqa: E731
    pr = row_factor_prior()
    c = f(c, _lsq(cat, i4, c, f, [0.1], [0.0], [10.0]) if i4 else [pr[0] if pr else 0.0])
    ev["int4_compiled_row_factor"] = f"compiled int4 rows above batch 1: {len(i4)}" if i4 else (pr[1] if pr else "prior: 0")
    i8 = _batch_rows(cat, rows, "weight_reread")
    key = "int8wo_compiled_bytes_per_weight_per_row"
    c0 = _set(c, key, None, 0.0)
    v = []
    for r in i8:
        extra = r["ms"] / 1e3 - _pred_ms(cat, r, c0) / 1e3
        v.append(extra * r["copy_bw"] / (param_counts(r["llm"], r["cand"].dropped_layers).linear * r["sc"].batch))
    if v:
        ev[key] = f"compiled int8 weight-only rows above batch 1: {len(v)}"
        return _set(c, key, None, max(_median(v), 0.0))
    pr = reread_prior()
    if pr:
        ev[key] = pr[1]
        return _set(c, key, None, pr[0])
    prior = _reread_prior(cat)
    ev[key] = f"prior: {prior:g} (the stored weight bytes, read once more per row: the mechanism's lower bound)"
    return _set(c, key, None, prior)


def _reread_prior(cat: Catalog) -> float:
    """Bytes per weight per row where no row measures it: a kernel that re-reads its weights for every row
    (methods.yaml compiled_batch_cost weight_reread) moves at least the stored bytes once more per row, so the
    smallest stored bytes_per_weight of those methods (1.0 for int8 weight-only)."""
    b = [float(m.get("bytes_per_weight")) for m in cat.methods.values()
         if (m.get("kernels") or {}).get("compiled_batch_cost") == "weight_reread" and m.get("bytes_per_weight")]
    return min(b) if b else 0.0


def _prefill_ratio(cat, rs: list[dict], c: dict) -> float:
    """log of the median analytical / measured prefill time over ``rs``."""
    return math.log(_median([_prefill_time_s(cat, r["gpu"], r["llm"], r["cand"], r["sc"], r["pstep"], c) * 1e3
                             / r["prefill_ms"] for r in rs]))


def _fit_compute(cat, rows, c, ev) -> dict:
    pre = [r for r in rows if r.get("prefill_ms") and r["sc"].batch * r["sc"].prompt_len >= PREFILL_MIN_TOKENS
           and r["cand"].sparsity == DEFAULT_SPARSITY and r["cand"].kv_budget is None]
    todo = [p for p in eff.precisions() if "compute" in eff.fitted_figures(p)]
    missing = []
    for p in todo:
        rs = [r for r in pre if eff.kernels_of(r["cand"].precision) == p]
        if not rs:
            missing.append(p)
            continue
        lo, hi = math.log(1e-3), math.log(2.0)  # bisection on log fraction: the median ratio falls as it grows
        for _ in range(40):
            mid = (lo + hi) / 2
            if _prefill_ratio(cat, rs, _with_twins(c, "compute", p, math.exp(mid))) > 0:
                lo = mid
            else:
                hi = mid
        c = _with_twins(c, "compute", p, math.exp((lo + hi) / 2))
        ev[f"compute[{p}]"] = f"prefills >= {PREFILL_MIN_TOKENS} tokens: {len(rs)}"
    fitted = {q: eff.compute_fraction(q, c) for q in todo if q not in missing and eff.kernels_of(q) == q}
    for p in missing:
        tr = compute_prior(p, fitted)
        others = [eff.compute_fraction(q, c) for q in eff.precisions() if eff.kernels_of(q) == q and q not in missing]
        c = _with_twins(c, "compute", p, tr[0] if tr else _median(others))
        ev[f"compute[{p}]"] = tr[1] if tr else f"prior: median of {len(others)} other precisions' fractions"
    return c


def initial(c: dict) -> dict:
    """``c`` with the kernel constants at neutral starting values (replaced by :func:`fit_kernels`)."""
    return {**c, "compiled_step_ms_per_layer": 0.0, "bw_compiled": {}, "layer_ms_compiled": {}, "compute": {},
            "sparse24": {"bw_compiled": eff.SPARSE_24["probe_bw_compiled"], "row_factor": 0.0},
            "int4_compiled_row_factor": 0.0, "int8wo_compiled_bytes_per_weight_per_row": 0.0}


def fit_kernels(cat: Catalog, rows: list[dict], c: dict, ev: dict, rnd) -> dict:
    """``c`` (from :func:`initial`) with every kernel constant fitted on ``rows`` (models.harness_fit._rows), each
    rounded by ``rnd``; the evidence of each in ``ev``. The order matters: bf16's compiled constants first, the
    methods' with them fixed, the batch costs with the methods' fractions fixed, prefill compute last."""
    c = _fit_bf16(cat, rows, c, ev)
    c = _fit_methods(cat, rows, c, ev)
    if ev[f"bw_compiled[{DEFAULT_PRECISION}]"].startswith("prior"):  # no bf16 row: from the methods' probes, then
        tr = bw_prior(DEFAULT_PRECISION, _fitted_bw(c, ev))  # the methods once more
        if tr:
            c = _with_twins(c, "bw_compiled", DEFAULT_PRECISION, tr[0])
            c = _fit_methods(cat, rows, c, ev)
            ev[f"bw_compiled[{DEFAULT_PRECISION}]"] = tr[1]
    c = _fit_sparse24(cat, rows, c, ev)
    c = _fit_row_costs(cat, rows, c, ev)
    c = _fit_compute(cat, rows, c, ev)
    return {**c, "compiled_step_ms_per_layer": rnd(c["compiled_step_ms_per_layer"]),
            "bw_compiled": {p: rnd(v) for p, v in c["bw_compiled"].items()},
            "layer_ms_compiled": {p: rnd(v) for p, v in c["layer_ms_compiled"].items()},
            "compute": {p: rnd(v) for p, v in c["compute"].items()},
            "sparse24": {k: rnd(v) for k, v in c["sparse24"].items()},
            "int4_compiled_row_factor": rnd(c["int4_compiled_row_factor"]),
            "int8wo_compiled_bytes_per_weight_per_row": rnd(c["int8wo_compiled_bytes_per_weight_per_row"])}
