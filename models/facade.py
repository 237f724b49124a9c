"""One stateless entry point for every prediction: ``predict(cat, gpu, llm, cand, sc, engine)``.

recommend, plan, compare, report, the Python API and validate all call it, so one configuration gets the
same figures in every command. ``engine`` picks the cost model: the serving engines (vLLM, SGLang,
TensorRT-LLM, llama.cpp) use :mod:`models.engine_speed` with the parameters fitted on published and
measured engine rows; ``transformers`` (the project's measurement harness) uses the harness cost model
(analytical roofline x measured efficiencies, corrected by the fitted model when one is given).
"""
from __future__ import annotations

import math

from profiles import GPU, LLM, Catalog
from profiles.engines import arch_of

from . import engine_memory as em, engine_speed as es
from .candidate import Candidate, Scenario
from .engine_fit import load_params
from .engine_intervals import evidence_kind, q_for, widen_factor
from .estimate import Estimate
from .memory import MemoryBreakdown
from .predict import Prediction, assemble, energy_of, predict as predict_harness
from .quality import QualityModel
from .speed import SpeedPrediction

DEFAULT_Q = 0.7  # log-interval half-width for an engine no row calibrates (x2 either way)


def predict(cat: Catalog, gpu: GPU, llm: LLM, cand: Candidate, sc: Scenario, engine: str | None = None,
            quality: QualityModel | None = None, speed_model=None, split: str | None = None) -> Prediction:
    """Every figure for one configuration on ``engine`` (call :func:`models.support.engine_block` first:
    this does not check that the engine runs it; None: the harness engine)."""
    eng = cat.engines[engine or cat.harness_engine]
    if eng.runs_everything:
        p = predict_harness(cat, gpu, llm, cand, sc, quality, speed_model)
        p.engine = eng.id
        return p
    return _predict_engine(cat, eng, gpu, llm, cand, sc, quality, split)


def _est(value, lo, hi, unit, detail) -> Estimate:
    lo, hi = min(lo, value), max(hi, value)
    return Estimate(value, lo, hi, unit, "fitted", detail)


def _predict_engine(cat, eng, gpu, llm, cand, sc, quality, split) -> Prediction:
    doc = load_params()["engines"].get(eng.id)
    params = doc["params"] if doc else es.prior_params([])
    q = es.query(cat, gpu, llm, cand, eng, sc.num_gpus, split)
    a, p = es.arrays(q), es.row_params(params, q.kernel, gpu.id)
    notes: list[str] = []
    B, P, G = float(sc.batch), float(sc.prompt_len), float(sc.gen_len)
    ctx = float(es.decode_context(P, G))
    # at batch > 1 a serving engine folds the other requests' prompts into the decode forwards
    x = float(es.interleaved_prefill_tokens(a, B, P, G))
    t_dec = float(es.decode_step_s(a, p, B, ctx, x))
    t_pre = float(es.prefill_s(a, p, 1.0, P))
    roof_dec = float(es.roofline_decode_s(a, B, ctx, x))
    roof_pre = float(es.roofline_prefill_s(a, 1.0, P))
    t_dec, t_pre = max(t_dec, roof_dec), max(t_pre, roof_pre)
    arch = arch_of(gpu.cc)
    if doc:
        w, why = widen_factor(doc["domain"], q.kernel, arch)
        kind = evidence_kind(gpu.id, doc.get("measured_gpus", []), q.kernel, doc.get("kernel_gpus"))
        qd, qp = q_for(doc["q90"], "decode", kind) * w, q_for(doc["q90"], "prefill", kind) * w
        notes += [f"{eng.id}: {x}" for x in why]
        if gpu.id not in doc.get("gpus", []):
            notes.append(f"{eng.id}: no published or measured row on {gpu.id}; efficiencies from other GPUs")
        elif kind == "novel" and not why:  # (a kernel never run on the architecture says more, above)
            notes.append(f"{eng.id}: no published row of kernel {q.kernel} on {gpu.id}: interval as wide as such "
                         "rows needed when held out")
        detail = (f"{eng.id} cost model (models/engine_speed.py; kernel {q.kernel}; fitted on {doc['rows']} "
                  f"rows from {len(doc['sources'])} sources)")
    else:
        qd = qp = DEFAULT_Q
        notes.append(f"{eng.id}: no fitted rows; prior kernel efficiencies")
        detail = f"{eng.id} cost model (priors only)"
    if q.split == "layer":
        notes.append(f"{eng.id} layer split over {sc.num_gpus} GPUs: memory pooled, GPUs run one after another")
    step = _est(t_dec * 1e3, max(roof_dec * 1e3, t_dec * 1e3 * math.exp(-qd)), t_dec * 1e3 * math.exp(qd), "ms", detail)
    tok = Estimate(B / (step.value / 1e3), B / (step.high / 1e3), B / (step.low / 1e3), "tok/s", "fitted", detail)
    pre = _est(t_pre * 1e3, max(roof_pre * 1e3, t_pre * 1e3 * math.exp(-qp)), t_pre * 1e3 * math.exp(qp), "ms", detail)
    util = roof_dec / t_dec
    f_mem, f_cmp = (float(f) for f in es.decode_floors_s(a, B, ctx, x))
    f_kv = float(es.kv_read_floor_s(a, B, ctx))
    spd = SpeedPrediction(step, tok, tok.scale(1 / B), pre, roof_dec * 1e3, roof_pre * 1e3, util, notes,
                          f_mem * 1e3, f_cmp * 1e3, f_kv * 1e3, float(p["req_ms"]))
    # memory: weights + KV of batch x context + the engine's runtime, per GPU
    n = sc.num_gpus
    kv_gb = B * sc.context * q.w.kv_bytes_per_token / 1e9
    rt = q.runtime_gb_per_gpu
    per = (q.w.weights_gb + kv_gb) / n + rt
    frac = float(eng.get("memory_fraction", 1.0))
    mem = MemoryBreakdown(q.w.weights_gb, kv_gb, 0.0, rt,
                          Estimate(per, per - 0.5 * rt, per + 0.5 * rt + 0.05 * per, "GB", "analytical",
                                   f"weights + KV of batch x context (exact byte counts) + {eng.id} runtime "
                                   f"(assumption {rt} GB); {em.memory_rule(q, gpu.memory_gb, frac)}"))
    power, j = energy_of(gpu, spd, sc)
    out = assemble(cat, gpu, llm, cand, sc, mem, spd, power, j, quality, f"engine:{eng.id}")
    out.engine = eng.id
    out.memory_fraction = frac
    out.kv_capacity_tokens = em.kv_capacity_tokens(q, gpu.memory_gb, frac)
    out.fixed_gb, out.fraction_of_free = em.fixed_gb(q), q.fraction_of_free
    return out


def ttft_ms(p: Prediction) -> Estimate:
    """Time to first token of one request: its prefill, one decode step and the serving engine's per-request
    time outside the forwards (engine_speed req_ms; 0 for the harness)."""
    a, b, r = p.speed.prefill_ms, p.speed.decode_step_ms, p.speed.request_ms
    return Estimate(a.value + b.value + r, a.low + b.low + r, a.high + b.high + r, "ms", a.source,
                    "prefill + one decode step" + (f" + {r:.3g} ms per request outside the forwards" if r else ""))


__all__ = ["predict", "ttft_ms"]
