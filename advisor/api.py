"""The stable Python API: ``advisor.predict(...)`` and the catalog listings.

>>> import advisor
>>> r = advisor.predict(model="llama3.1-8b", gpu="h100-sxm", engine="vllm", precision="fp8")
>>> r["decode_tok_s"]["value"], r["ttft_ms"]["unit"]

Every figure is ``{value, low, high, unit, source}`` (source: fitted, analytical, published, measured;
``detail`` says which cost model); ``quality`` is keyed by quality metric. Unknown ids raise ValueError
naming close matches. Nothing here keeps state between calls. Where the engine does not run the configuration
(``supported`` False, ``reason`` says why and which engines do), the speed, memory and energy keys are None and
``quality`` is still given: it belongs to the model and the method.
"""
from __future__ import annotations

import math

from profiles import UnknownProfileError, load

from models.candidate import DEFAULT_KV, DEFAULT_PRECISION, DEFAULT_SPARSITY, Candidate, Scenario
from models.facade import predict as _predict, ttft_ms
from models.predict import memory_budget
from models.support import engine_block
from models.quality_served import served as served_quality

# every answer's figures of speed, memory and energy ({value, low, high, unit, source}; None where unsupported)
SPEED_KEYS = ("decode_tok_s", "output_tok_s", "prefill_tok_s", "ttft_ms", "tpot_ms", "peak_mem_gb", "power_w",
              "j_per_token")

def _cat():
    return load()


def _resolve(kind: str, name: str) -> str:
    try:
        return _cat().resolve(kind, name).id
    except UnknownProfileError as e:
        raise ValueError(str(e)) from None


def engines() -> list[str]:
    return list(_cat().engines)


def gpus() -> list[str]:
    return list(_cat().gpus)


def models() -> list[str]:
    return list(_cat().llms)


def methods(engine: str | None = None) -> list[str]:
    """Method ids (precisions, sparsity, KV policies); with ``engine``, those it runs on some GPU."""
    cat = _cat()
    if engine is None:
        return list(cat.methods)
    eng = cat.engines[_resolve("engine", engine)]
    if eng.runs_everything:
        return list(cat.methods)
    kv = eng.get("kv")
    sp = eng.get("sparsity")
    return (eng.method_ids() + [m for m in cat.methods if cat.methods[m].kind == "kv" and m in kv]
            + [m for m in cat.methods if cat.methods[m].kind == "sparsity" and m in sp])


def gpu_info(gpu: str) -> dict:
    """Catalog facts of one GPU: arch, mem_gb, mem_bw_gbps, tdp_w, idle_w, peak TFLOP/s per dtype."""
    g = _cat().gpus[_resolve("gpu", gpu)]
    return {"id": g.id, "name": g.name, "arch": f"sm{g.cc[0]}{g.cc[1]}" if g.compute_capability else None,
            "architecture": g.architecture, "mem_gb": g.memory_gb, "mem_bw_gbps": g.mem_bw_gbps, "tdp_w": g.tdp_w,
            "idle_w": g.idle_w, "peak_tflops": dict(g.tflops_dense), "sources": dict(g.raw.get("sources") or {})}


def _e(est) -> dict:
    return {"value": est.value, "low": est.low, "high": est.high, "unit": est.unit, "source": est.source,
            "detail": est.detail}


def _positive_int(name: str, v, lo: int = 1, hi: int = 10_000_000) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v \
            or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
    return int(v)


def predict(model: str, gpu: str, engine: str | None = None, precision: str = DEFAULT_PRECISION,
            sparsity: str = DEFAULT_SPARSITY, kv: str = DEFAULT_KV, batch: int = 1, prompt_len: int = 512,
            gen_len: int = 128, num_gpus: int = 1, kv_budget: int | None = None, backend: str = "compiled",
            split: str | None = None) -> dict:
    """Predict one pinned configuration (``engine`` None: the catalog's default engine). See the module
    docstring for the shape of the result."""
    cat = _cat()
    engine = cat.default_engine if engine is None else engine
    mid, gid, eid = _resolve("model", model), _resolve("gpu", gpu), _resolve("engine", engine)
    prec = _resolve("method", precision)
    kvid = _resolve("method", kv)
    sp = sparsity if str(sparsity).startswith("drop-") else _resolve("method", sparsity)
    for name, v, kind in (("precision", prec, "precision"), ("kv", kvid, "kv")):
        if cat.methods[v].kind != kind:
            raise ValueError(f"{name} '{v}' is a {cat.methods[v].kind} method, not a {kind} one")
    batch, prompt_len = _positive_int("batch", batch, 1, 4096), _positive_int("prompt_len", prompt_len, 1, 10_000_000)
    gen_len, num_gpus = _positive_int("gen_len", gen_len, 1, 10_000_000), _positive_int("num_gpus", num_gpus, 1, 64)
    if backend not in ("compiled", "eager"):
        raise ValueError(f"backend must be compiled or eager, got {backend!r}")
    g, llm, eng = cat.gpus[gid], cat.llms[mid], cat.engines[eid]
    cand = Candidate(prec, sp, kvid, kv_budget)
    if cand.dropped_layers >= llm.num_hidden_layers:
        raise ValueError(f"sparsity {sp}: {llm.id} has {llm.num_hidden_layers} layers")
    out = {"engine": f"{eng.id} {eng.version}", "model": mid, "gpu": gid, "candidate": cand.label,
           "num_gpus": num_gpus, "supported": True, "fits": None, "reason": None, "notes": []}
    block = engine_block(cat, eng, g, llm, cand, num_gpus, split)
    if block:
        # the same keys as a supported answer: no speed, memory or energy figure (the engine does not run it), and
        # the quality figures, which belong to the model and the method, not to the engine
        out.update(supported=False, fits=False, reason=block, **{k: None for k in SPEED_KEYS})
        out["quality"] = _quality(served_quality(cat).predict_all(llm, cand, context=prompt_len + gen_len), out)
        return out
    sc = Scenario(batch, prompt_len, gen_len, backend, num_gpus)
    sm = None
    if eng.runs_everything:
        from models.correction import load_default
        sm = load_default()[0]
    p = _predict(cat, g, llm, cand, sc, eid, None, sm, split)
    s = p.speed
    tpot, pre = s.decode_step_ms, s.prefill_ms
    out.update({
        "decode_tok_s": _e(s.per_seq_tok_s),
        "output_tok_s": _e(s.decode_tok_s),
        "prefill_tok_s": {"value": prompt_len / (pre.value / 1e3), "low": prompt_len / (pre.high / 1e3),
                          "high": prompt_len / (pre.low / 1e3), "unit": "tok/s", "source": pre.source,
                          "detail": pre.detail},
        "ttft_ms": _e(ttft_ms(p)),
        "tpot_ms": _e(tpot),
        "peak_mem_gb": _e(p.memory.per_gpu_gb),
        "power_w": _power(p, g, num_gpus),
        "j_per_token": _e(p.j_per_token),
        "roofline_decode_ms": s.roofline_decode_ms,
        "notes": list(s.notes),
        "cost_model": p.speed_model,
    })
    usable, rule = memory_budget(p, g.memory_gb)
    out["fits"] = p.memory.per_gpu_gb.value <= usable
    if not out["fits"]:
        out["reason"] = (f"does not fit: needs {p.memory.per_gpu_gb.value:.1f} GB per GPU > {usable:.3g} GB usable "
                         f"({rule})")
    out["quality"] = _quality(p.quality, out)
    return out


def _quality(allq: dict, out: dict) -> dict:
    """The answer's quality block (metric -> {value, low, high, unit, source, kind}) from a quality model's
    ``predict_all``; a metric no row supports is named in ``out``'s notes."""
    from .serialize import quality_block
    q = {k: {x: v[x] for x in ("value", "low", "high", "unit", "source", "kind")} for k, v in quality_block(allq).items()}
    out["notes"] += [f"quality {k} unknown: no published, transferred or measured figure"
                     for k, v in q.items() if v["value"] is None]
    return q


def _power(p, gpu, n: int) -> dict:
    """Board power of all the GPUs with its interval, never outside [idle, TDP] per GPU."""
    from models.energy import idle_w, rel_err
    k = 1 + rel_err()
    lo_b, hi_b = idle_w(gpu) * n, gpu.tdp_w * n
    return {"value": p.power_w, "low": max(lo_b, p.power_w / k), "high": min(hi_b, p.power_w * k), "unit": "W",
            "source": "fitted", "detail": f"board power model (models/energy.py, fitted on NVML rows), {n} GPU(s); "
                                          f"per GPU within idle {idle_w(gpu):.0f} W and TDP {gpu.tdp_w:.0f} W"}
