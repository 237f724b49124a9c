"""Plain-dict views of engine results, for ``--json`` and the Python API."""
from __future__ import annotations

from dataclasses import asdict

from .engine import Evaluated, Recommendation


QUALITY_UNITS = {"ppl_delta": ("%", 100.0), "accuracy_drop": ("points", 1.0), "longctx_drop": ("points", 1.0)}


def quality_dict(p) -> dict:
    """Every quality quantity of a Prediction (:func:`quality_block` of its ``quality``)."""
    return quality_block(p.quality)


def quality_block(allq: dict) -> dict:
    """Every quality quantity of a quality model's ``predict_all``: kind -> {value, low, high, unit, source, kind,
    metric, detail, citations}; ``value`` None (kind ``unknown``) where no row supports it. ``kind``: published (the
    exact model, method and metric), transferred (same method on other models, a size law or a monotone bound),
    measured (this project's small-model campaign), reference (16-bit dense: 0 by definition), unknown."""
    out = {}
    for kind, (est, parts, missing) in allq.items():
        unit, k = QUALITY_UNITS[kind]
        if est is None:
            out[kind] = {"value": None, "low": None, "high": None, "unit": unit, "source": None, "kind": "unknown",
                         "metric": None, "detail": "no figure for " + ", ".join(c[1] for c in missing),
                         "citations": []}
            continue
        nonzero = [c for c in parts if c.rule not in ("reference", "within-budget")]
        label = "reference" if not nonzero else est.source
        within = sorted({x for c in parts if c.rule == "within-budget" for x in c.cites})
        out[kind] = {"value": est.value * k, "low": est.low * k, "high": est.high * k, "unit": unit,
                     "source": "; ".join(sorted({x for c in nonzero for x in c.cites}) + within)
                     or "16-bit dense reference",
                     "kind": label, "metric": ", ".join(sorted({c.metric for c in nonzero})) or None,
                     "detail": est.detail, "citations": sorted({x for c in nonzero for x in c.cites})}
    return out


def prediction_dict(e: Evaluated) -> dict:
    p = e.prediction
    return {
        "candidate": {**asdict(p.candidate), "label": p.candidate.label},
        "rank": e.rank,
        "pareto": e.pareto,
        "rejected_by": e.rejected_by,
        "reason": e.reason,
        "lost_because": e.lost_because,
        "speed_model": p.speed_model,
        "decode_tok_s": p.speed.decode_tok_s.as_dict(),
        "per_sequence_tok_s": p.speed.per_seq_tok_s.as_dict(),
        "decode_ms_per_step": p.speed.decode_step_ms.as_dict(),
        "prefill_ms": p.speed.prefill_ms.as_dict(),
        "roofline_decode_ms": p.speed.roofline_decode_ms,
        "roofline_prefill_ms": p.speed.roofline_prefill_ms,
        "request_latency_s": p.request_latency_s.as_dict(),
        "memory": p.memory.as_dict(),
        "power_w": p.power_w,
        "j_per_token": p.j_per_token.as_dict(),
        "usd_per_mtok": p.usd_per_mtok.as_dict() if p.usd_per_mtok else None,
        "quality_loss": p.quality_loss.as_dict() if p.quality_loss else None,
        "quality_parts": [
            {"component": list(c.component), "loss": c.loss, "low": c.low, "high": c.high, "rule": c.rule,
             "metric": c.metric, "citations": list(c.cites)} for c in p.quality_parts],
        "quality_missing": [list(c) for c in p.quality_missing],
        "quality": quality_dict(p),
        "eor_per_wh": p.eor,
        "tweor": p.tweor,
        "notes": p.speed.notes,
    }


def recommendation_dict(rec: Recommendation, deploy: dict | None = None, show_rejected: bool = False) -> dict:
    req = rec.request
    out = {
        "request": asdict(req),
        "gpu": rec.gpu_id,
        "model": rec.model_id,
        "notes": rec.notes,
        "recommended": prediction_dict(rec.best) if rec.best else None,
        "alternatives": [prediction_dict(e) for e in rec.ranked[1:req.top]],
        "rejected_counts": {c: len(rec.rejected(c)) for c in ("hardware", "memory", "quality", "speed")},
        "feasible_count": len(rec.ranked),
        "relaxations": rec.relaxations,
        "deploy": deploy or {},
    }
    if show_rejected:
        out["rejected"] = [{"candidate": c.label, "rejected_by": "hardware", "reason": r}
                           for c, r in rec.hardware_rejected] + [
            {"candidate": e.candidate.label, "rejected_by": e.rejected_by, "reason": e.reason}
            for e in rec.evaluated if e.rejected_by]
    else:
        out["rejected_examples"] = {c: [{"candidate": (x[0] if c == "hardware" else x.candidate).label,
                                          "reason": x[1] if c == "hardware" else x.reason}
                                         for x in rec.rejected(c)[:3]]
                                    for c in ("hardware", "memory", "quality", "speed")}
    return out
