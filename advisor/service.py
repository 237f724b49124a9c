"""Glue between the engine and its callers: the speed model to use, deploy commands."""
from __future__ import annotations

from profiles import load

from .deploy import transformers_snippet, vllm_command
from .engine import Recommendation


def speed_model_or_none():
    """The fitted cost model if one is available, else None (the analytical model stands).

    Returns (model_or_None, note for stderr)."""
    try:
        from models.correction import load_default
    except ImportError:
        return None, "speed and memory: analytical cost model (no fitted model available)"
    return load_default()


def deploy_commands(rec: Recommendation) -> dict:
    if rec.best is None:
        return {}
    cat = load()
    llm, gpu = cat.llms[rec.model_id], cat.gpus[rec.gpu_id]
    cand = rec.best.candidate
    has_bf16 = bool(gpu.peak_tflops("bf16"))
    out = {}
    v = vllm_command(cat, llm, cand, rec.request.context, rec.request.batch, rec.request.num_gpus, has_bf16)
    out["vllm"] = v or f"vLLM has no path for {cand.label} in this advisor's catalog: use transformers"
    out["transformers"] = transformers_snippet(cat, llm, cand, has_bf16)
    return out
