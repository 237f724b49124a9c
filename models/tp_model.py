"""Multi-GPU cost model: the all-reduce and the tensor-parallel decode step, fitted on measured rows.

Rows: ``measurement/data/multi_gpu/tp_rows.csv`` (the harness's tensor-parallel sweep,
:mod:`measurement.tp`, on H200s joined by NVLink; random weights).

All-reduce of ``m`` bytes over ``n`` GPUs (ring, as NCCL runs it for these sizes):

    t_ar(m, n) = alpha + 2 (n - 1) / n x m / busbw

``alpha`` (s) and ``busbw`` (bytes/s) fitted by non-negative least squares on relative error over the
all-reduce rows (nccl-tests style, measured alone).

Decode step on each of ``n`` GPUs (per-rank weights ``W``, KV bytes ``K`` = batch x context x KV bytes
per token per rank, ``L`` layers, batch ``B``; BW the measured copy bandwidth of one GPU):

    t = c_w[precision] x W / BW + c_kv x K / BW + L x (c_l[precision] + B x c_b) + c_0
        + [n > 1] x ((2 L + 1) x t_ar(B x hidden x 2, n) + L x c_tp)

The coefficients are inverse efficiencies and fixed costs, all >= 0, fitted by NNLS on relative error.
``c_tp`` (a per-layer cost of splitting beyond the all-reduces) is only identifiable from multi-GPU rows:
held out by TP size, the model fitted on one GPU predicts two GPUs with ``c_tp`` = 0 and the all-reduce
measured on its own. Validation (:func:`validate`) holds out each TP size in turn (and each model).
"""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import numpy as np

ROWS = Path(__file__).resolve().parent.parent / "measurement" / "data" / "multi_gpu" / "tp_rows.csv"


def load_rows(path: Path | str = ROWS) -> list[dict]:
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["status"] == "ok"]


# --------------------------------------------------------------------------------------------- all-reduce
class AllReduceModel:
    """``predict([[bytes, n_gpus], ...])`` -> seconds. scikit-learn style: ``fit`` returns self, learned
    state ends in ``_``."""

    def fit(self, X, y):
        from scipy.optimize import nnls
        X, y = np.asarray(X, float), np.asarray(y, float)
        ring = 2 * (X[:, 1] - 1) / X[:, 1] * X[:, 0]
        A = np.column_stack([np.ones_like(ring), ring]) / y[:, None]
        (a, inv_bw), _ = nnls(A, np.ones_like(y))
        self.alpha_s_, self.busbw_gbps_ = float(a), float(1 / inv_bw / 1e9) if inv_bw > 0 else math.inf
        return self

    def predict(self, X):
        X = np.asarray(X, float)
        n = X[:, 1]
        t = self.alpha_s_ + 2 * (n - 1) / np.maximum(n, 1) * X[:, 0] / (self.busbw_gbps_ * 1e9)
        return np.where(n > 1, t, 0.0)

    def get_params(self, deep=True):
        return {}

    def set_params(self, **kw):
        return self


def allreduce_xy(rows: list[dict]):
    ar = [r for r in rows if r["metric"] == "allreduce_us"]
    X = [[float(r["msg_bytes"]), float(r["num_gpus"])] for r in ar]
    y = [float(r["value"]) * 1e-6 for r in ar]
    return np.asarray(X, float), np.asarray(y, float)


# --------------------------------------------------------------------------------------------- decode step
COEFS = ("c_w_bf16", "c_w_fp8", "c_kv", "c_l_bf16", "c_l_fp8", "c_b", "c_0", "c_tp")


def decode_features(rows: list[dict], cat=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the basis columns of COEFS (seconds once multiplied by the coefficient), the all-reduce
    query (bytes, n) and the count of all-reduces per step."""
    from measurement.tp import shard_plan
    from profiles import load
    cat = cat or load()
    cols, ar, n_ar = [], [], []
    bw_by_row = [float(r.get("copy_bw_gbps") or 0) for r in rows]
    for r, bw in zip(rows, bw_by_row, strict=True):
        llm = cat.llm(r["model"])
        n, B, ctx = int(r["num_gpus"]), int(r["batch"]), int(r["prompt_len"])
        p = shard_plan(llm, n)
        bw = (bw or _H200_COPY_GBPS) * 1e9
        lin = p.layers * (p.layer_params - 2 * p.hidden)  # matmul weights per rank
        other = p.params - lin
        prec = r["precision"]  # the measured rows' precisions each have their own c_w_ and c_l_ coefficients
        W = lin * float(cat.methods[prec].get("bytes_per_weight")) + other * 2
        K = B * ctx * p.kv_bytes_per_token()
        row = {c: 0.0 for c in COEFS}
        if f"c_w_{prec}" not in row:
            raise ValueError(f"{prec}: the decode model has no coefficients for this precision (COEFS)")
        row[f"c_w_{prec}"] = W / bw
        row["c_kv"] = K / bw
        row[f"c_l_{prec}"] = p.layers * 1e-6
        row["c_b"] = p.layers * B * 1e-6
        row["c_0"] = 1e-3
        row["c_tp"] = p.layers * 1e-6 if n > 1 else 0.0
        cols.append([row[c] for c in COEFS])
        ar.append([B * p.hidden * 2, n])
        n_ar.append(2 * p.layers + 1 if n > 1 else 0)
    return np.asarray(cols, float), np.asarray(ar, float), np.asarray(n_ar, float)


# copy bandwidth measured at the start of the sweep (measurement.roofline.measure_peaks), used when a row
# does not carry its own: the call-3 log's figure
_H200_COPY_GBPS = 4180.0


class TPDecodeModel:
    """Decode step time (s) of tensor-parallel rows. ``fit(rows, y)`` with rows as dicts of the TP dataset
    (scikit-learn style; ``coef_`` and ``allreduce_`` are the learned state)."""

    def __init__(self, allreduce: AllReduceModel | None = None):
        self.allreduce = allreduce

    def _design(self, rows):
        F, arq, n_ar = decode_features(rows)
        t_ar = n_ar * self.allreduce_.predict(arq)
        return F, t_ar

    def fit(self, rows, y, ar_rows=None):
        from scipy.optimize import nnls
        self.allreduce_ = self.allreduce or AllReduceModel().fit(*allreduce_xy(ar_rows or []))
        y = np.asarray(y, float)
        F, t_ar = self._design(rows)
        used = F.any(axis=0)
        if len({r["num_gpus"] for r in rows}) < 2:  # c_tp and c_l are both x layers: one TP size cannot split them
            used[COEFS.index("c_tp")] = False
        coef = np.zeros(F.shape[1])
        sol, _ = nnls(F[:, used] / y[:, None], 1 - t_ar / y)
        coef[used] = sol
        self.coef_ = coef
        self.fitted_columns_ = [c for c, u in zip(COEFS, used, strict=True) if u]
        return self

    def predict(self, rows):
        F, t_ar = self._design(rows)
        return F @ self.coef_ + t_ar


def decode_rows(rows):
    d = [r for r in rows if r["metric"] == "decode_step_ms"]
    return d, np.asarray([float(r["value"]) * 1e-3 for r in d])


def _scores(y, yhat, lo=None, hi=None):
    ape = np.abs(yhat - y) / y
    out = {"n": int(len(y)), "median_ape": float(np.median(ape)), "mape": float(np.mean(ape)),
           "max_ape": float(np.max(ape))}
    if lo is not None:
        out["coverage90"] = float(np.mean((y >= lo) & (y <= hi)))
    return out


def validate(rows: list[dict] | None = None) -> dict:
    """Leave-one-TP-size-out and leave-one-model-out decode errors; 90% intervals from the held-in
    groups' own held-out residuals (nested: the held-out group never sets its interval)."""
    rows = rows if rows is not None else load_rows()
    ar_X, ar_y = allreduce_xy(rows)
    ar = AllReduceModel().fit(ar_X, ar_y)
    d, y = decode_rows(rows)
    out = {"allreduce": {"alpha_us": ar.alpha_s_ * 1e6, "busbw_gbps": ar.busbw_gbps_,
                         "rows": int(len(ar_y)),
                         **_scores(ar_y, ar.predict(ar_X))},
           "decode": {}}
    for key in ("num_gpus", "model"):
        groups = sorted({r[key] for r in d})
        res_all, pred_all = [], np.zeros(len(d))
        lo_all, hi_all = np.zeros(len(d)), np.zeros(len(d))
        per = {}
        for g in groups:
            tr = [i for i, r in enumerate(d) if r[key] != g]
            te = [i for i, r in enumerate(d) if r[key] == g]
            m = TPDecodeModel(ar).fit([d[i] for i in tr], y[tr])
            p = m.predict([d[i] for i in te])
            pred_all[te] = p
            # nested interval: residuals inside the held-in rows, each model predicted with that model held
            # out (the held-out group never sets its own interval)
            inner = []
            for g2 in sorted({d[i]["model"] for i in tr}):
                tr2 = [i for i in tr if d[i]["model"] != g2]
                te2 = [i for i in tr if d[i]["model"] == g2]
                if not tr2 or not te2:
                    continue
                m2 = TPDecodeModel(ar).fit([d[i] for i in tr2], y[tr2])
                inner += list(np.log(y[te2] / m2.predict([d[i] for i in te2])))
            q = float(np.quantile(np.abs(inner), 0.9)) if inner else math.log(1.5)
            lo_all[te], hi_all[te] = p * math.exp(-q), p * math.exp(q)
            per[g] = dict(_scores(y[te], p, lo_all[te], hi_all[te]), interval_factor=math.exp(q))
            res_all += list(np.log(y[te] / p))
        out["decode"][f"leave_one_{key}_out"] = {"all": _scores(y, pred_all, lo_all, hi_all), "groups": per}
    full = TPDecodeModel(ar).fit(d, y)
    out["decode"]["coefficients"] = dict(zip(COEFS, map(float, full.coef_), strict=True))
    out["rows"] = {"decode": int(len(y)), "sources": sorted({r["source_id"] for r in rows})}
    return out


def fitted_allreduce(rows: list[dict] | None = None) -> dict:
    """The all-reduce constants the other cost models use, with their provenance."""
    rows = rows if rows is not None else load_rows()
    X, y = allreduce_xy(rows)
    m = AllReduceModel().fit(X, y)
    src = sorted({r["source_id"] for r in rows if r["metric"] == "allreduce_us"})
    return {"alpha_s": m.alpha_s_, "busbw_gbps": m.busbw_gbps_, "rows": int(len(y)), "sources": src,
            "median_ape": statistics.median(abs(a - b) / b for a, b in zip(m.predict(X), y, strict=True))}


ALLREDUCE_PATH = Path(__file__).resolve().parent / "data" / "allreduce.json"


def main(argv=None) -> int:
    """``python -m models.tp_model``: refit the all-reduce constants (models/data/allreduce.json) from
    the measured rows and print the held-out decode errors."""
    import json
    import sys

    from profiles import load
    rows = load_rows()
    ar = fitted_allreduce(rows)
    gpu = load().gpu("h200")
    link = float(gpu.interconnect["gpu_to_gpu_gbps"]) / 2
    doc = {"alpha_s": ar["alpha_s"], "busbw_gbps": ar["busbw_gbps"],
           "link_efficiency": ar["busbw_gbps"] / link,
           "measured_on": "2x NVIDIA H200 SXM, NVLink (nvidia-smi topo: NV18), NCCL 2.28.9, torch 2.11.0+cu130, "
                          "all_reduce captured in a CUDA graph, 20 back to back",
           "datasheet_link_gbps_per_direction": link,
           "rows": ar["rows"], "sources": ar["sources"], "fit_median_ape": ar["median_ape"],
           "data": "measurement/data/multi_gpu/tp_rows.csv (metric allreduce_us)",
           "fitted_by": "python -m models.tp_model (AllReduceModel: NNLS on relative error)"}
    ALLREDUCE_PATH.write_text(json.dumps(doc, indent=1) + "\n")
    res = validate(rows)
    json.dump({"allreduce": doc, "validation": res}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
