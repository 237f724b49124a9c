"""Fit and validate the board-power model (:mod:`models.energy`) on measured NVML rows.

Rows (one GPU's average power over a measured window, and how hard the window drove the GPU):

* the harness (``measurement/data/measurements.csv``, H100 SXM and H200): decode windows
  (``avg_power_w``, ``decode_roofline_frac``) and prefill windows (``prefill_j`` / ``prefill_ms``,
  ``prefill_roofline_frac``);
* llama.cpp on one H200 (``measurement/data/llamacpp/rows.csv``): decode and prefill rows with
  ``avg_power_w`` and ``roofline_frac`` (one GPU only);
* the tensor-parallel sweep (``measurement/data/multi_gpu/tp_rows.csv``): decode and prefill, power per
  GPU averaged over the GPUs.
* the power probe on one H200 (``measurement/data/power_probe/rows*.csv``, :mod:`measurement.power_probe`):
  copy, GEMM and launch-bound kernels at set duty cycles, their datasheet utilisations computed from the
  bytes and FLOPs of each window.

The measured roofline fractions use the copy bandwidth and matmul rate measured on the machine; the
power model is driven by the datasheet roofline (what a prediction knows), so each fraction is rescaled by
measured / datasheet (bandwidth for memory-bound rows, dense 16-bit peak for compute-bound ones).

Published rows (ML.ENERGY leaderboard v3, vLLM on H100 SXM and B200: J/token with the measured output
tokens/s and TPOT of the same configuration) are never fitted: they validate the model on other GPUs and
another source, with their own measured speed (so only the power model is tested), utilisation from the
datasheet roofline of the configuration (context taken as 1,000 tokens: the benchmark's prompts vary).
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np

from profiles.dtypes import BF16

from . import conformal

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "measurement" / "data"


def _f(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def bytes_per_weight(cat, precision: str) -> float:
    """Bytes a decode step streams per parameter for a row's precision: the catalog's ``bytes_per_weight``
    (methods.yaml); 2.0 (16 bit) for a precision the catalog lacks."""
    m = cat.methods.get(precision)
    bpw = m.get("bytes_per_weight") if m is not None else None
    return float(bpw) if bpw is not None else 2.0


def _ridge(g) -> float:
    """FLOPs per byte at which the datasheet bf16 peak and bandwidth balance."""
    return g.peak_tflops(BF16) * 1e12 / (g.mem_bw_gbps * 1e9)


def measured_rows(cat) -> list[dict]:
    """{gpu, source, u_memory, u_compute (datasheet-relative), power_w (one GPU)}.

    The rows record the fraction of the machine-measured roofline of their bound unit; it is rescaled to
    the datasheet. The other unit's utilisation: for decode, the same step's FLOPs over the peak, i.e.
    u_compute = u_memory x (2 x batch / bytes per weight) / ridge (the weights dominate the bytes at these
    contexts); for prefill, u_memory ~ 0 (weights read once per chunk). The tensor-parallel rows compute both
    from their exact per-rank bytes and FLOPs."""
    import pandas as pd

    from measurement.tp import shard_plan
    out = []

    from .candidate import DEFAULT_KV, DEFAULT_PRECISION, Candidate, Scenario
    from .engine_fit import kv_of
    from .engine_speed import decode_context
    from .measured_rows import row_candidate
    from .memory import kv_bytes_per_token
    from .roofline import decode_step

    def add(gpu_id, source, um, uc, power, kv_share=0.0):
        if power is None or power <= 0 or um is None or uc is None or (um <= 0 and uc <= 0):
            return
        um = min(um, 1.2)
        out.append({"gpu": gpu_id, "source": source, "u_memory": um, "u_compute": min(uc, 1.2),
                    "u_kv": um * min(max(kv_share, 0.0), 1.0), "power_w": power})

    def harness_kv_share(r) -> float:
        """KV-cache bytes over all bytes of the row's decode step (models/roofline.decode_step)."""
        try:
            st = decode_step(cat, cat.llm(r["model"]), row_candidate(r),
                             Scenario(int(r["batch"]), int(r["prompt_len"]), int(r["gen_len"]), str(r["backend"])))
        except (LookupError, KeyError, ValueError, TypeError):
            return 0.0
        return st.kv_bytes / st.bytes if st.bytes else 0.0

    kv_names = kv_of(cat)

    d = pd.read_csv(DATA / "measurements.csv")
    for r in d[d.status == "ok"].to_dict("records"):
        g = cat.gpu(r["gpu"])
        sb = (_f(r.get("copy_bw_gbps")) or g.mem_bw_gbps) / g.mem_bw_gbps
        sc = (_f(r.get("matmul_tflops_bf16")) or g.peak_tflops(BF16)) / g.peak_tflops(BF16)
        u = _f(r.get("decode_roofline_frac"))
        if u:
            um = u * sb
            add(g.id, f"harness:{g.id}", um, um * 2 * r["batch"] / bytes_per_weight(cat, r["precision"]) / _ridge(g),
                _f(r.get("avg_power_w")), harness_kv_share(r))
        pj, pms, u = _f(r.get("prefill_j")), _f(r.get("prefill_ms")), _f(r.get("prefill_roofline_frac"))
        if pj and pms and u and pms > 200:  # windows under 0.2 s are below NVML's energy-counter resolution
            add(g.id, f"harness:{g.id}", 0.0, u * sc, pj / (pms / 1e3))
    h200 = cat.gpu("h200")
    with open(DATA / "llamacpp" / "rows.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["status"] != "ok" or r["num_gpus"] != "1" or r["metric"] not in ("decode_tok_s", "prefill_tok_s"):
                continue
            u, p = _f(r["roofline_frac"]), _f(r["avg_power_w"])
            if not u or not p:
                continue
            if r["metric"] == "decode_tok_s":
                um = u * _f(r["copy_bw_gbps"]) / h200.mem_bw_gbps
                bpw = (_f(r["gguf_bits_per_weight"]) or 16) / 8
                # KV read per step: batch x the mean decode context x the cache's bytes per token
                kvm = kv_names.get(str(r["kv_dtype"] or "").lower(), DEFAULT_KV)
                ctx = float(decode_context(_f(r["prompt_len"]) or 0, _f(r["gen_len"]) or 0, _f(r["depth"]) or 0))
                kvb = int(r["batch"]) * ctx * kv_bytes_per_token(cat, cat.llm(r["model"]),
                                                                 Candidate(DEFAULT_PRECISION, kv=kvm))
                wb = _f(r["weight_bytes_read"]) or 0.0
                add("h200", "llamacpp:h200", um, um * 2 * int(r["batch"]) / bpw / _ridge(h200), p,
                    kvb / (wb + kvb) if wb + kvb > 0 else 0.0)
            else:
                add("h200", "llamacpp:h200", 0.0, u * _f(r["peak_tflops_bf16"]) / h200.peak_tflops(BF16), p)
    for path in sorted((DATA / "power_probe").glob("rows*.csv")):  # one file per device call
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                if r["roofline_flag"] or not _f(r["avg_power_w"]):
                    continue
                add(r["gpu"], f"probe:{r['gpu']}", _f(r["u_memory"]), _f(r["u_compute"]), _f(r["avg_power_w"]),
                    1.0 if r["kind"] == "attn" else 0.0)  # decode attention reads only the KV cache
    with open(DATA / "multi_gpu" / "tp_rows.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["status"] != "ok" or r["metric"] not in ("decode_step_ms", "prefill_ms") or not r["power_w_per_gpu"]:
                continue
            ws = [_f(x) for x in r["power_w_per_gpu"].split()]
            if not ws or any(w is None for w in ws):
                continue
            pl = shard_plan(cat.llm(r["model"]), int(r["num_gpus"]))
            B, ctx, t = int(r["batch"]), int(r["prompt_len"]), float(r["value"]) / 1e3
            bpw = bytes_per_weight(cat, r["precision"])
            kvb = 0.0
            if r["metric"] == "decode_step_ms":
                kvb = B * ctx * pl.kv_bytes_per_token()
                byts = pl.matmul_params * bpw + kvb
                flops = 2 * pl.matmul_params * B + B * 4 * ctx * pl.layers * pl.q_heads * pl.head_dim
            else:
                byts, flops = pl.matmul_params * bpw, 2 * pl.matmul_params * B * ctx
            add("h200", "tp:h200", byts / t / (h200.mem_bw_gbps * 1e9), flops / t / (h200.peak_tflops(BF16) * 1e12),
                statistics.mean(ws), kvb / byts)
    return out


def fit(rows: list[dict], cat) -> dict:
    """NNLS on (P - idle) / (TDP - idle) = active + c_memory x u_memory + c_kv x u_kv + c_compute x u_compute
    (relative error in power; u_kv: the KV-cache part of u_memory)."""
    from scipy.optimize import nnls

    from .energy import idle_w
    A, y, w = [], [], []
    for r in rows:
        g = cat.gpu(r["gpu"])
        idle, tdp = idle_w(g), g.tdp_w
        um = min(r["u_memory"], 1.0)
        A.append([1.0, um, min(r.get("u_kv", 0.0), um), min(r["u_compute"], 1.0)])
        y.append((r["power_w"] - idle) / (tdp - idle))
        w.append((tdp - idle) / r["power_w"])
    A, y, w = np.asarray(A), np.asarray(y), np.asarray(w)
    coef, _ = nnls(A * w[:, None], y * w)
    return {"active": float(coef[0]), "c_memory": float(coef[1]), "c_kv": float(coef[2]), "c_compute": float(coef[3])}


def predict_power(r: dict, params: dict, cat) -> float:
    from .energy import board_power_w
    return board_power_w(cat.gpu(r["gpu"]), r["u_memory"], r["u_compute"], params, u_kv=r.get("u_kv", 0.0))


def published_rows(cat) -> list[dict]:
    """ML.ENERGY rows with J/token, output tok/s and TPOT of one configuration on a catalog model."""
    from .candidate import Candidate
    from .engine_speed import prompts_per_step
    from .memory import kv_bytes_per_token, param_counts
    by = {}
    with open(DATA / "published_engine" / "vllm_sglang.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if not r["source_id"].startswith("mlenergy"):
                continue
            k = (r["gpu"], r["num_gpus"], r["model"], r["precision"], r["batch"])
            # one configuration's rows share its lengths: the mean decode context (where derived) and the
            # estimated prompt and mean output
            m = by.setdefault(k, {"engine": cat.resolve("engine", r["engine"]).id,  # the benchmark's engine
                                  "ctx": _f(r.get("decode_ctx") or 0) or 1000.0,
                                  "lengths": (_f(r.get("prompt_len_est") or 0) or 600.0,
                                              _f(r.get("gen_len") or 0) or 400.0)})
            m[r["metric"]] = _f(r["value"])
    out = []
    for (gpu_id, n, model, prec, batch), m in by.items():
        if not all(m.get(x) for x in ("j_per_token", "output_tok_s", "tpot_ms")):
            continue
        try:
            llm, g = cat.llm(model), cat.gpu(gpu_id)
        except Exception:  # noqa: BLE001 - models outside the catalog (Qwen3) are skipped
            continue
        n, B = int(n), float(batch)
        pc = param_counts(llm)
        total = pc.total
        wbytes = (pc.total - pc.embed) * 2  # bf16 weights read per step (embedding gathered)
        ctx = m["ctx"]
        step = m["tpot_ms"] / 1e3
        kvb = B * ctx * kv_bytes_per_token(cat, llm, Candidate(prec))
        u_bw = (wbytes + kvb) / n / (step * g.mem_bw_gbps * 1e9)
        # the step's matmul tokens: the batch plus the prompts folded in meanwhile (as the speed model counts them)
        tokens = B + float(prompts_per_step(B, *m["lengths"]))
        u_tc = 2 * (total - pc.embed) * tokens / n / (step * g.peak_tflops(BF16) * 1e12)
        out.append({"gpu": gpu_id, "source": "mlenergy-leaderboard-v3", "engine": m["engine"], "u_memory": u_bw,
                    "u_compute": u_tc, "u_kv": u_bw * kvb / (wbytes + kvb),
                    "n": n, "model": model, "batch": B, "prompt": m["lengths"][0], "gen": m["lengths"][1],
                    "power_w": m["j_per_token"] * m["output_tok_s"] / n, "j_per_token": m["j_per_token"],
                    "output_tok_s": m["output_tok_s"]})
    return out


def _scores(y, p, lo=None, hi=None):
    ape = np.abs(np.asarray(p) - np.asarray(y)) / np.asarray(y)
    s = {"n": int(len(y)), "mape": float(ape.mean()), "median_ape": float(np.median(ape))}
    if lo is not None:
        s["coverage90"] = float(np.mean((np.asarray(y) >= lo) & (np.asarray(y) <= hi)))
    return s


def validate(cat, by: str = "source") -> dict:
    """Leave-one-group-out on the measured rows (groups: source or gpu), intervals from the held-in
    groups' own held-out residuals; plus the published rows, predicted by the model fitted on every
    measured row, J/token from their measured throughput."""
    rows = measured_rows(cat)
    key = by
    groups = sorted({r[key] for r in rows})
    res, per = [], {}
    for g in groups:
        tr = [r for r in rows if r[key] != g]
        te = [r for r in rows if r[key] == g]
        p = fit(tr, cat)
        inner = []
        for g2 in sorted({r[key] for r in tr}):
            tr2 = [r for r in tr if r[key] != g2]
            if not tr2:
                continue
            p2 = fit(tr2, cat)
            inner += [math.log(r["power_w"] / predict_power(r, p2, cat)) for r in tr if r[key] == g2]
        q = conformal.quantile(np.abs(inner)) if inner else math.log(1.5)
        y = [r["power_w"] for r in te]
        yh = [predict_power(r, p, cat) for r in te]
        per[g] = _scores(y, yh, [v * math.exp(-q) for v in yh], [v * math.exp(q) for v in yh])
        res += list(zip(y, yh, strict=True))
    full = fit(rows, cat)
    # the outer loop's held-out residuals are _conformal_q's (same folds, same fits): not refitted here
    q_all = conformal.quantile([abs(math.log(y / yh)) for y, yh in res]) if res else math.log(1.5)
    pub = published_rows(cat)
    jy = [r["j_per_token"] for r in pub]
    jp = [predict_power(r, full, cat) * r["n"] / r["output_tok_s"] for r in pub]
    pub_by_gpu = {}
    for r, a, b in zip(pub, jy, jp, strict=True):
        pub_by_gpu.setdefault(r["gpu"], []).append((a, b))
    return {"held_out_by": by, "measured": {"groups": per,
                                            "all": _scores([a for a, _ in res], [b for _, b in res])},
            "published_j_per_token": {g: _scores([a for a, _ in v], [b for _, b in v],
                                                 [b * math.exp(-q_all) for _, b in v],
                                                 [b * math.exp(q_all) for _, b in v])
                                      for g, v in sorted(pub_by_gpu.items())},
            "params": full, "interval_factor": math.exp(q_all), "rows": len(rows), "published_rows": len(pub)}


def _conformal_q(rows, cat, key) -> float:
    res = []
    for g in sorted({r[key] for r in rows}):
        p = fit([r for r in rows if r[key] != g], cat)
        res += [abs(math.log(r["power_w"] / predict_power(r, p, cat))) for r in rows if r[key] == g]
    return conformal.quantile(res) if res else math.log(1.5)


def main() -> int:
    """``python -m models.energy_fit``: refit models/data/power.json from the measured rows."""
    from profiles import load
    cat = load()
    rows = measured_rows(cat)
    params = fit(rows, cat)
    doc = dict(params, rel_err=_conformal_q(rows, cat, "source"), rows=len(rows),
               sources=sorted({r["source"] for r in rows}), gpus=sorted({r["gpu"] for r in rows}),
               model="P = idle + (TDP - idle) x clip(active + c_memory x u_memory + c_kv x u_kv + c_compute x "
                     "u_compute, 0, 1); u: datasheet-roofline time of the unit / step time; u_kv: the KV-cache "
                     "reads' part of u_memory",
               fitted_by="python -m models.energy_fit (NNLS, relative error in power)")
    from .energy import PARAMS_PATH
    PARAMS_PATH.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
