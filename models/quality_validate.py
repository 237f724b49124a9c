"""Held-out errors of the quality cost model (``advisor validate --quality``).

Every published row of one quantity is predicted with its whole group left out of the model (its paper,
or its model), by the lookup rules of :class:`models.quality.QualityModel` (exact, variant, family, the
perplexity size law, transfer). Scores per method family: mean absolute error in points (points of
relative perplexity increase for ppl_delta, score points for the drops), the same error beyond the interval
that the published figures' rounding leaves (issue 11: WikiText-2 8.3 vs 8.2 is 0.0-2.4%, so a prediction
inside that range is not wrong by the rounding), and the share of rows inside the predicted 90% interval
(and, rounding-aware, the share whose rounding interval meets the predicted one). These figures are for the lookup rules; the monotone envelope needs catalog
models, so :func:`held_out` also scores, under ``as_served``, the rows of catalog models and catalog methods through the
whole :meth:`QualityModel.component` (pooling by size, chains, budgets) as recommend answers them, from the
same model of each fold.
"""
from __future__ import annotations

import statistics

from .quality import (EVICTION, KINDS, PPL, QualityModel, calibrate_widths, held_out_lookups, lookup_of, paper_of,
                      rows_from_published, rows_from_small_model)

# Labels of published rows that name no catalog method: their report group (a catalog method's is its
# quality_family in methods.yaml) and the eviction policies among them (the catalog's: quality_rows.EVICTION).
PUBLISHED_FAMILY = {"rtn-int4": "4-bit weight", "gptq-int4-noreorder": "4-bit weight", "smoothquant-w8a8": "8-bit weight"}
PUBLISHED_EVICTION = {"h2o"}


def _family(comp: tuple, cat) -> str:
    """The group a component's held-out errors are reported under."""
    if comp[1].startswith("gguf-"):
        return "gguf"
    if comp[0] == "precision":
        m = cat.methods.get(comp[1])
        fam = m.get("quality_family") if m is not None and m.kind == comp[0] else PUBLISHED_FAMILY.get(comp[1])
        return fam or "other weight"
    if comp[0] == "kv":
        return "kv eviction" if comp[1] in EVICTION or comp[1] in PUBLISHED_EVICTION else "kv quantization"
    return "sparsity / layer drop"


POOLED_4_8 = "4-8-bit weight (pooled)"


def _four_to_eight_bits(comp: tuple, cat) -> bool:
    """A weight method of 4 to 8 bits (issue 11's bar): the 4- and 8-bit families, and the GGUF types of the
    catalog whose bits per weight (methods.yaml ``quality_bits``) lie in 4-8.5 (Q8_0 stores 8.5)."""
    fam = _family(comp, cat)
    if fam in ("4-bit weight", "8-bit weight"):
        return True
    m = cat.methods.get(comp[1]) if fam == "gguf" else None
    return m is not None and m.get("quality_bits") is not None and 4 <= float(m.get("quality_bits")) <= 8.5


def _scores(res: list, kind: str, cat) -> dict:
    fams = {}
    for r, c in res:
        fams.setdefault(_family(r.component, cat), []).append((r, c))
        if _four_to_eight_bits(r.component, cat):
            fams.setdefault(POOLED_4_8, []).append((r, c))
    k = 100.0 if kind == PPL else 1.0
    return {f: {"n": len(v), "mae_points": statistics.mean(abs(c.loss - max(r.loss, 0)) * k for r, c in v),
                "mae_beyond_rounding_points": statistics.mean(_beyond_rounding(r, c.loss) * k for r, c in v),
                "coverage90": sum(c.low <= max(r.loss, 0) <= c.high for r, c in v) / len(v),
                "coverage90_rounding": sum(_meets_rounding(r, c.low, c.high) for r, c in v) / len(v),
                "rules": sorted({c.rule for _, c in v})} for f, v in sorted(fams.items())}


def _rounding_interval(r) -> tuple[float, float]:
    """The losses a published pair can mean (``Row.lo``/``hi``, the point where the row has none), at >= 0."""
    return (max(r.lo if r.lo is not None else r.loss, 0.0), max(r.hi if r.hi is not None else r.loss, 0.0))


def _beyond_rounding(r, pred: float) -> float:
    """How far ``pred`` falls outside what the published pair can mean: the loss interval from half a unit
    in the last printed place of both figures (``Row.lo``/``hi``; the point where the row has none), clipped
    at 0 like the loss itself. 0 inside it."""
    lo, hi = _rounding_interval(r)
    return max(lo - pred, pred - hi, 0.0)


def _meets_rounding(r, low: float, high: float) -> bool:
    """Whether a predicted interval meets the published pair's rounding interval: the printed figure is
    consistent with a true loss inside the prediction (the rounding-aware reading of coverage)."""
    lo, hi = _rounding_interval(r)
    return low <= hi and lo <= high


def held_out(cat, by: str = "paper") -> dict:
    rows = rows_from_published(cat.quality_rows)
    measured = rows_from_small_model()
    prefers = {m.id: m.get("quality_prefers") for m in cat.methods.values() if m.get("quality_prefers")}
    key = paper_of if by == "paper" else (lambda r: r.model)
    out, served = {}, {}
    for kind in KINDS:
        # widths calibrated on the training papers only (nested: the held-out group never sets them)
        def make(train, kind=kind):
            return QualityModel(train, measured, prefers, learn=kind == PPL, catalog=cat,
                                widths=calibrate_widths(train, measured, prefers))

        def ask(q, r, kind=kind):
            """The lookup, and for a catalog model the whole served rule too, from one model per fold."""
            c = lookup_of(q, r)
            if c is None:
                return None
            # at the row's own context where it states one (an eviction policy's law in context/budget)
            return c, (q.component(cat.llm(r.model), r.component, r.budget, kind, r.context) if r.model in cat.llms
                       else None)
        pairs = list(held_out_lookups(rows, key, make, kind, ask))
        res = [(r, c) for r, (c, _) in pairs]
        out[kind] = _scores(res, kind, cat)
        # the methods the product can recommend (published tables also hold e.g. round-to-nearest int4)
        out[kind]["_catalog_methods"] = _scores([(r, c) for r, c in res if r.component[1] in cat.methods], kind, cat)
        out[kind]["_predicted_of"] = {"rows": len([r for r in rows if r.kind == kind]), "predicted": len(res)}
        # only what recommend can be asked: catalog models x catalog methods (published tables also hold e.g.
        # round-to-nearest int4, which the served rule would answer by pooling but no user can select)
        # a served figure names its dataset (WikiText-2 first): it is scored on rows of that dataset only (a C4 row
        # does not test a WikiText-2 claim; the lookup scores above answer each row in its own dataset)
        asked = [(r, s) for r, (_, s) in pairs if s is not None and r.component[1] in cat.methods]
        served[kind] = _scores([(r, s) for r, s in asked if s.metric == r.metric], kind, cat)
        served[kind]["_other_dataset_rows"] = sum(s.metric != r.metric for r, s in asked)
    out["as_served"] = served
    return out
