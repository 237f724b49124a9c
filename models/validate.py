"""Held-out accuracy of the fitted cost model, plots, and error on published third-party figures."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from profiles import Catalog, UnknownProfileError, load

from .candidate import Candidate, Scenario
from .fitted import backends_of, cross_val, design, refit_analytical, scores, usable_rows
from .harness_fit import fit_constants
from .speed import predict_speed

PUBLISHED_CSV = Path(__file__).resolve().parent.parent / "measurement" / "data" / "published_throughput.csv"
SPLITS = {"leave-one-gpu-out": "gpu", "leave-one-model-out": "model", "leave-one-method-out": "precision"}
# Engine labels of published_throughput.csv that are not catalog engines, and the harness backend that stands for
# each (tuned, graph-captured deployments); a catalog engine's is its engines.yaml harness_backend.
OTHER_PUBLISHED_ENGINES = {"tgi": "compiled", "autoawq": "compiled", "torchao/gpt-fast": "compiled"}


def harness_backend(cat: Catalog, engine: str) -> str | None:
    """The harness speed model's backend (compiled / eager) that stands for a published row's engine; None: the
    row is not compared."""
    eng = cat.engines.get(engine)
    return eng.get("harness_backend") if eng else OTHER_PUBLISHED_ENGINES.get(engine)


def held_out(df, cat: Catalog | None = None, alpha: float | None = None) -> dict:
    """Per split and target: the corrected model's held-out MAPE and 90%-interval coverage (``scores``), the
    analytical model's held-out MAPE on the same rows (``scores[t]["analytical_held_out_mape"]``: in every fold
    its measured constants are refitted by models/harness_fit.py on the fold's training rows, and the correction
    is fitted on those predictions), its in-sample MAPE with the shipped constants (``analytical``), the raw
    pairs for plotting, and per constant the number of folds that fell back to its prior (``priors``)."""
    from .fitted import DEFAULT_ALPHA
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    cat = cat or load()
    df = usable_rows(df)
    X, A, Y, keep, meta = design(df, cat)
    sub = df.loc[keep]
    shipped: dict = {}
    fit_constants(sub, cat, shipped)  # what each constant rests on with every row
    out = {}
    for name, col in SPLITS.items():
        groups = sub[col].astype(str).to_numpy()
        if len(set(groups)) < 2:
            out[name] = {"skipped": f"only one {col} in the data"}
            continue
        evidence: list = []
        cv = cross_val(X, A, Y, groups, alpha, min_groups=2, meta=meta,
                       refit=refit_analytical(sub, cat, evidence))
        priors: dict = {}  # constants the whole dataset has evidence for, but a fold's training rows lack
        for ev in evidence:
            for k, v in ev.items():
                if v.startswith("prior") and not shipped.get(k, "prior").startswith("prior"):
                    priors[k] = priors.get(k, 0) + 1
        out[name] = {"scores": scores(cv, backends_of(meta, len(Y))), "pairs": cv, "analytical": _analytical_scores(A, Y), "priors": priors,
                     "folds": len(evidence)}
    return out


def _analytical_scores(A, Y) -> dict:
    res = {}
    for j, t in enumerate(("decode_ms", "prefill_ms", "peak_mem_gb", "j_per_token")):
        ok = np.isfinite(Y[:, j]) & (Y[:, j] > 0)
        if ok.any():
            res[t] = float(np.mean(np.abs(A[ok, j] - Y[ok, j]) / Y[ok, j]))
    return res


def published_rows(path: Path = PUBLISHED_CSV, cat: Catalog | None = None) -> list[dict]:
    """Third-party rows that map onto our GPUs, models and precisions (batch stated)."""
    cat = cat or load()
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            try:
                gpu, llm = cat.gpu(r["gpu"]), cat.llm(r["model"])
                prec = cat.method(r["precision"]).id
            except (UnknownProfileError, KeyError):
                continue
            if cat.methods[prec].kind != "precision" or not r.get("decode_tok_s") or not r.get("batch"):
                continue
            if harness_backend(cat, r["engine"]) is None:
                continue
            rows.append({**r, "gpu_id": gpu.id, "model_id": llm.id, "precision_id": prec})
    return rows


def published_errors(predictor=None, cat: Catalog | None = None) -> dict:
    """Decode tok/s error on published rows, per engine. ``predictor(cat,gpu,llm,cand,sc)`` -> tok/s."""
    cat = cat or load()
    per_engine: dict[str, list] = {}
    for r in published_rows(cat=cat):
        gpu, llm = cat.gpus[r["gpu_id"]], cat.llms[r["model_id"]]
        batch = int(float(r["batch"]))
        sc = Scenario(batch, int(float(r["prompt_len"] or 128)), int(float(r["gen_len"] or 128)),
                      harness_backend(cat, r["engine"]))
        cand = Candidate(r["precision_id"])
        try:
            pred = predictor(cat, gpu, llm, cand, sc) if predictor else predict_speed(cat, gpu, llm, cand, sc).decode_tok_s.value
        except (ValueError, KeyError):
            continue
        meas = float(r["decode_tok_s"])
        if "aggregate" not in r.get("metric_definition", "").lower() and batch > 1:
            pred = pred / batch  # per-stream figure
        per_engine.setdefault(r["engine"], []).append((r["gpu_id"], r["model_id"], r["precision_id"], batch, pred, meas))
    return {e: {"n": len(v), "mape": float(np.mean([abs(p - m) / m for *_, p, m in v])),
                "median_ape": float(np.median([abs(p - m) / m for *_, p, m in v])), "rows": v}
            for e, v in per_engine.items()}


def svg_scatter(pairs: dict, title: str, path: Path) -> Path:
    """Predicted against measured, log-log, with the y = x line: a dependency-free SVG."""
    pred, true = np.asarray(pairs["pred"], float), np.asarray(pairs["true"], float)
    ok = np.isfinite(pred) & np.isfinite(true) & (pred > 0) & (true > 0)
    pred, true = pred[ok], true[ok]
    W = H = 360
    pad = 40
    if len(pred) == 0:
        path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}"><text x="20" y="40">'
                        f'{title}: no data</text></svg>')
        return path
    lo = math.log10(min(pred.min(), true.min())) - 0.05
    hi = math.log10(max(pred.max(), true.max())) + 0.05
    sx = lambda v: pad + (math.log10(v) - lo) / (hi - lo) * (W - 2 * pad)  # noqa: E731
    sy = lambda v: H - pad - (math.log10(v) - lo) / (hi - lo) * (H - 2 * pad)  # noqa: E731
    pts = "".join(f'<circle cx="{sx(t):.1f}" cy="{sy(p):.1f}" r="2.5" fill="#1f77b4" fill-opacity="0.6"/>'
                  for p, t in zip(pred, true))
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">'
           f'<rect width="{W}" height="{H}" fill="white"/>'
           f'<line x1="{pad}" y1="{H - pad}" x2="{W - pad}" y2="{pad}" stroke="#999" stroke-dasharray="4"/>'
           f'<rect x="{pad}" y="{pad}" width="{W - 2 * pad}" height="{H - 2 * pad}" fill="none" stroke="black"/>'
           f'{pts}<text x="{pad}" y="20">{title}</text>'
           f'<text x="{W / 2 - 40}" y="{H - 10}">measured (log)</text>'
           f'<text x="10" y="{H / 2}" transform="rotate(-90 10 {H / 2})">predicted (log)</text>'
           f'<text x="{pad + 4}" y="{H - pad - 4}">10^{lo:.1f}</text><text x="{W - pad - 40}" y="{pad + 12}">10^{hi:.1f}</text>'
           '</svg>')
    path.write_text(svg)
    return path
