"""Glue between the decisions and their callers: the harness speed model to use, launch lines."""
from __future__ import annotations

from profiles import load

from .deploy import launch
from .engine import Recommendation


def speed_model_or_none():
    """The fitted harness cost model if one is available, else None (the analytical model stands).

    Returns (model_or_None, note for stderr)."""
    try:
        from models.correction import load_default
    except ImportError:
        return None, "speed and memory: analytical cost model (no fitted model available)"
    return load_default()


def harness_note(note: str | None, engines) -> str | None:
    """The harness cost model's note, only where an answer came from it (the transformers engine); the serving
    engines' answers come from their own cost models, which the answers name."""
    from profiles import harness_engine_id

    return note if note and harness_engine_id() in set(engines) else None


def deploy_commands(rec: Recommendation) -> dict:
    if rec.best is None:
        return {}
    cat = load()
    llm, gpu = cat.llms[rec.model_id], cat.gpus[rec.gpu_id]
    p = rec.best.prediction
    return launch(cat, p.engine, gpu, llm, p.candidate, rec.request.context, rec.request.batch,
                  rec.request.num_gpus)
