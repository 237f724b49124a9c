"""Quality cost model: predicted quality loss (relative %) of a candidate, from published results.

Each published row gives a baseline and a value from the same table; its *loss* is
``(value - baseline) / baseline`` for perplexity and ``(baseline - value) / baseline`` for scores.
A candidate is split into components (its precision, its sparsity, its KV policy); each component's
loss comes from the first rule that has rows:

1. ``exact``: the same model (instruct/chat variants count, with a wider interval);
2. ``family``: the same family, nearest size on a log scale;
3. ``fitted``: a regression learned from all published rows and the small model measured here
   together (:mod:`models.quality_fit`: method, metric kind, size, Llama-3 and budget terms), with
   its leave-one-source-out interval;
4. ``transfer``: other families, when the regression has never seen the method; Llama-3 is taken
   as 2x as sensitive as Llama-2 to 4-bit and W8A8 quantization (Huang et al. 2024, "How Good Are
   Low-bit Quantized LLaMA3 Models?", https://arxiv.org/abs/2404.14047), the median otherwise;
5. ``measured-small``: a real measurement on the small model trained by ``measurement.quality``,
   only where nothing else exists, with the widest interval.

Perplexity metrics are preferred (WikiText-2, then C4, then others); task scores are used only
where a component has no perplexity rows (the KV eviction policies report LongBench).
Combination rule: component losses add (additive in relative perplexity, a first-order
approximation); the interval adds the component intervals plus 25% of the sum for interactions.
Eviction: nothing lost while the context fits the budget; past it, the law in context/budget of
:mod:`models.quality_evict` where the tables state their context, else the published row with the nearest
budget at or below the candidate's (a budget below every published one widens the interval).
"""
from __future__ import annotations

import math
from functools import lru_cache

from profiles import Catalog, LLM

from . import conformal
from .candidate import DEFAULT_SPARSITY, Candidate
from .estimate import Estimate
from .quality_evict import evict_law
from .quality_pool import size_pooled
from .quality_rows import (ACC, BASE_KV, BASE_PRECISIONS, EVICTION, KINDS, LLAMA3_FACTOR,
    LLAMA3_SENSITIVE, LONG, METRIC_RANK, PPL, REL_WIDTH, SCORE_METRICS, SMALL_MODEL_CSV, ComponentLoss, Row, width_floor,
    _base_model, _component, _family_of, _half_unit, _pick_metric, _size_of, metric_kind, nearest_size, row_loss,
    rows_from_published, rows_from_small_model, rule_pools, rule_width)


# the row vocabulary is re-exported: callers import it from here
__all__ = ["ACC", "BASE_KV", "BASE_PRECISIONS", "EVICTION", "KINDS", "LLAMA3_FACTOR", "LLAMA3_SENSITIVE",
           "LONG", "METRIC_RANK", "PPL", "REL_WIDTH", "SCORE_METRICS", "SMALL_MODEL_CSV", "ComponentLoss", "Row",
           "QualityModel", "backs_a_bound", "calibrate_widths", "held_out_lookups", "metric_kind", "paper_of", "row_loss", "rows_from_published",
           "rows_from_small_model", "_half_unit", "_base_model", "_component", "_family_of", "_size_of"]


def _preferred(rows: list[Row], prefers: str | None) -> list[Row]:
    """Rows of the variant the method catalog names (``quality_prefers``), when there are any."""
    if not prefers:
        return rows
    hit = [r for r in rows if prefers.lower() in r.notes.lower()]
    return hit or rows


def _pick_budget(rows: list[Row], budget: int | None) -> tuple[list[Row], bool]:
    """Rows at the nearest published budget at or below ``budget`` (or the smallest above it)."""
    budgets = sorted({r.budget for r in rows if r.budget is not None})
    if budget is None or not budgets:
        return rows, False
    below = [b for b in budgets if b <= budget]
    chosen = below[-1] if below else budgets[0]
    return [r for r in rows if r.budget == chosen], not below


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


class QualityModel:
    """Looks up and combines component losses; see the module docstring for the rules."""

    def __init__(self, published: list[Row], measured: list[Row] | None = None, prefers: dict | None = None,
                 learn: bool = True, catalog: Catalog | None = None, widths: dict | None = None):
        self.published = published
        # rule -> relative half-width from held-out residuals (calibrate_widths); REL_WIDTH where absent
        self.widths = widths or {}
        self.published_ppl = [r for r in published if r.kind == PPL]
        self.measured = measured or []
        self.prefers = prefers or {}
        self.catalog = catalog
        self._raw_cache: dict = {}
        self.fitted, self.fitted_q90 = (None, None)
        if learn:  # perplexity rows only: a task score is another quantity
            from .quality_fit import fit_with_interval
            self.fitted, self.fitted_q90 = fit_with_interval(self.published_ppl + self.measured)

    @classmethod
    def from_catalog(cls, cat: Catalog) -> "QualityModel":
        return _cached(cat)

    def component(self, llm: LLM, comp: tuple, budget: int | None = None, kind: str = PPL,
                  context: int | None = None) -> ComponentLoss | None:
        """The component's loss of quantity ``kind``, monotone by construction (:meth:`_envelope`); an eviction
        policy past its budget follows the law in context/budget where a table states its context
        (:mod:`models.quality_evict`)."""
        return (fixed_component(comp, budget, context) or self._evicted(llm, comp, budget, kind, context)
                or self._envelope(llm, comp, budget, kind))

    def _evicted(self, llm: LLM, comp: tuple, budget: int | None, kind: str, context: int | None,
                 metric: str | None = None) -> ComponentLoss | None:
        if comp[0] != "kv" or comp[1] not in EVICTION or not budget or context is None:
            return None

        def law(m):
            return evict_law(self.published, self.widths, m, comp, budget, kind, context, metric)
        if self.catalog is None or llm.id not in self.catalog.llms:  # a published row's model (validation)
            return law(llm)
        # pooled along the family's sizes like every other figure: a larger model never loses more
        return size_pooled(self, llm, comp, budget, kind, raw=law)

    def _envelope(self, llm: LLM, comp: tuple, budget: int | None, kind: str) -> ComponentLoss | None:
        """Monotone by construction. Along model size: the figures of the family's models are pooled into
        the evidence-weighted non-increasing fit (:func:`models.quality_pool.pool_by_size`: a larger model of the family never
        loses more, and a noisy row of one size does not override better evidence at another). Along
        methods and budgets: the largest loss among this (method, budget) and every one it must not
        beat (a method of the same quality chain with more bits, a milder budget). A component with no
        figure of its own stays unknown: what a milder setting loses bounds it from below only."""
        own = self._raw(llm, comp, budget, kind)
        if own is None:
            return None
        best, via = self._size_pooled(llm, comp, budget, kind), None
        for c, b in self._milder(comp, budget):
            x = self._size_pooled(llm, c, b, kind)
            if x is not None and x.loss > best.loss + 1e-12:
                best, via = x, (c, b)
        if via is None:
            return best
        note = (f"raised to {via[0][1]}" + (f" at budget {via[1]}" if via[1] is not None else "") +
                f" on {llm.id} ({best.loss:.4g}): a milder setting may not lose more (monotone order)")
        # the interval keeps this model's own evidence (its low end) and reaches the raised figure's high end.
        # Raised from the small model's figure, it is a lower bound only: it stays a small-model figure,
        # shown but never passing a bound (backs_a_bound).
        rule = "measured-small" if own.rule == "measured-small" else "transfer"
        if rule == "measured-small":
            note += "; only a lower bound, since this method has no published figure of its own"
        return ComponentLoss(comp, best.loss, min(own.low, best.loss), max(best.high, own.high), rule,
                             best.metric, best.cites + (note,))

    def _milder(self, comp: tuple, budget: int | None) -> list[tuple]:
        """(component, budget) pairs this one must not beat: more bits in a shared chain, milder budgets."""
        out = [(comp, b) for b in self._milder_budgets(comp, budget)]
        return out + [(c, None) for c in self._chain_milder(comp)]

    def _size_pooled(self, llm: LLM, comp: tuple, budget: int | None, kind: str) -> ComponentLoss | None:
        """This model's figure after pooling the family's figures by size (:func:`models.quality_pool.size_pooled`)."""
        return size_pooled(self, llm, comp, budget, kind)

    def _chain_milder(self, comp: tuple) -> list[tuple]:
        """Methods sharing a quality chain with ``comp`` that store more bits (methods.yaml)."""
        cat = self.catalog
        m = cat.methods.get(comp[1]) if cat else None
        if m is None or not m.get("quality_chains"):
            return []
        bits = float(m.get("quality_bits"))
        out = []
        for o in cat.methods.values():
            if o.id != m.id and o.kind == m.kind and set(o.get("quality_chains") or ()) & set(m.get("quality_chains")) \
                    and float(o.get("quality_bits")) > bits:
                out.append((comp[0], o.id))
        return out

    def _milder_budgets(self, comp: tuple, budget: int | None) -> list[int]:
        if budget is None:
            return []
        pub = sorted({r.budget for r in self.published if r.component == comp and r.budget is not None})
        if comp[0] == "kv":
            return [b for b in pub if b > budget]  # more tokens kept
        return [b for b in pub if b < budget]  # fewer layers dropped (per mille)

    def _raw(self, llm: LLM, comp: tuple, budget: int | None, kind: str) -> ComponentLoss | None:
        key = (llm.id, comp, budget, kind)
        if key not in self._raw_cache:
            self._raw_cache[key] = self._lookup(llm, comp, budget, kind)
        return self._raw_cache[key]

    def _lookup(self, llm: LLM, comp: tuple, budget: int | None, kind: str,
                metric: str | None = None) -> ComponentLoss | None:
        """The first rule with rows (module docstring); ``metric``: the dataset's metric to answer for where
        rows of it exist (None: the preferred one, WikiText-2 first)."""
        rows = _preferred([r for r in self.published if r.component == comp and r.kind == kind],
                          self.prefers.get(comp[1]))
        pools = rule_pools(rows, llm)
        if not any(pool for rule, pool in pools if rule != "transfer") and kind == PPL and rows:
            fitted = self._fitted(llm, comp, budget, rows, metric)  # a size law needs published rows
            if fitted:
                return fitted
        floor = width_floor(kind)
        for rule, pool in pools + [("measured-small", [r for r in self.measured
                                                       if r.component == comp and r.kind == kind])]:
            if not pool:
                continue
            pool = _pick_metric(pool, metric)
            pool, below_all = _pick_budget(pool, budget)
            if rule == "family":
                pool = nearest_size(pool, llm.published_params_b)
            factor = 1.0
            losses, los, his = [], [], []
            for r in pool:
                f = 1.0
                if rule == "transfer" and comp[1] in LLAMA3_SENSITIVE:
                    if llm.family == "llama3" and r.family == "llama2":
                        f = LLAMA3_FACTOR
                    elif llm.family == "llama2" and r.family == "llama3":
                        f = 1 / LLAMA3_FACTOR
                losses.append(r.loss * f)
                los.append((r.lo if r.lo is not None else r.loss) * f)
                his.append((r.hi if r.hi is not None else r.loss) * f)
            loss = _median(losses) * factor
            width, calibrated = rule_width(self.widths, kind, rule)
            width *= 2.0 if below_all else 1.0
            # how far this rule's answers fell from held-out papers' figures (calibrate_widths), around the
            # figures as printed (rounding) and the spread of the rows
            half = max(max(abs(loss), floor) * width, (max(losses) - min(losses)) / 2)
            if rule == "exact" and not below_all and not calibrated:
                half = 0.0
            # never a gain: a method or a policy does not improve on the 16-bit dense model. A printed gain reads
            # as no measurable loss: the figure is 0 and its interval reaches the width around 0 (clipping the
            # interval after centring it on the gain would claim a loss of exactly 0)
            loss = max(loss, 0.0)
            low, high = min(loss - half, min(los)), max(loss + half, max(his))
            low, high = max(low, 0.0), max(high, 0.0)
            ev = max(max(0.0, max(his)) - max(0.0, min(los)), max(0.0, max(losses)) - max(0.0, min(losses))) / 2
            return ComponentLoss(comp, loss, min(low, loss), max(high, loss), rule, pool[0].metric,
                                 tuple(sorted({r.cite for r in pool})), ev)
        return None

    def _fitted(self, llm: LLM, comp: tuple, budget: int | None, rows: list[Row],
                metric: str | None = None) -> ComponentLoss | None:
        m = self.fitted
        if m is None or comp not in m.methods_:
            return None
        metric = _pick_metric(rows, metric)[0].metric if rows else (metric or "wikitext2_ppl")
        q = Row(llm.id, llm.family, llm.published_params_b, comp, budget, metric, 0.0, "", "")
        loss = max(float(m.predict([q])[0]), 0.0)
        k = math.exp(self.fitted_q90)
        n_pub = len(rows)
        # multiplicative, but a loss within the tables' resolution (width_floor) may also be none at all, and a
        # lower end below that resolution is no lower bound: a table could not tell it from no loss (printed
        # gains and equal figures are common at 8 bits), so it reads 0
        low = min(loss / k, loss - width_floor(PPL))
        low = 0.0 if low < width_floor(PPL) else low
        return ComponentLoss(comp, loss, low, loss * k, "fitted", metric,
                             (f"perplexity regression over {len(self.published_ppl)} published + {len(self.measured)} "
                              f"measured perplexity rows ({n_pub} for this method; models/quality_fit.py)",))

    def predict(self, llm: LLM, cand: Candidate, kind: str = PPL,
                context: int | None = None) -> tuple[Estimate | None, list[ComponentLoss], list[tuple]]:
        """Loss of quantity ``kind`` for the candidate (ppl_delta: fraction; score kinds: points), its
        parts, and the components with no figure of that kind. Combination: additive (in relative
        perplexity to first order: for a small increase e, (1+e1)(1+e2)-1 ~ e1+e2; for scores, points add
        as a first-order approximation); the interval adds the parts' intervals plus 25% of the summed
        losses for interactions, and the detail says how the total was made."""
        parts, missing = [], []
        budget_drop = round(cand.dropped_layers / llm.num_hidden_layers * 1000) if cand.dropped_layers else None
        for comp, budget in ((("precision", cand.precision), None),
                             (("sparsity", cand.sparsity_method), budget_drop),
                             (("kv", cand.kv), cand.kv_budget)):
            c = self.component(llm, comp, budget, kind, context)
            (parts if c else missing).append(c if c else comp)
        if missing:
            return None, parts, missing
        loss = sum(p.loss for p in parts)
        low = sum(p.low for p in parts)
        high = sum(p.high for p in parts)
        nonzero = [p for p in parts if p.rule not in ("reference", "within-budget")]
        if len(nonzero) > 1:
            slack = 0.25 * sum(abs(p.loss) for p in nonzero)
            low, high = max(low - slack, 0.0), high + slack
        rules = sorted({p.rule for p in nonzero}) or ["reference"]
        # one part known only from the small model trained here makes the whole figure a small-model one
        source = "measured" if "measured-small" in rules else ("published" if rules in (["exact"], ["reference"])
                                                              else "transferred")
        detail = " + ".join(f"{p.component[1]} {p.loss * (100 if kind == PPL else 1):.3g} ({p.rule}, {p.metric})"
                            for p in nonzero) or "16-bit dense reference"
        if len(nonzero) > 1:
            detail += " (added; interval +25% of the sum for interactions)"
        unit = "fraction" if kind == PPL else "points"
        return Estimate(loss, min(low, loss), max(high, loss), unit, source, detail), parts, []

    def predict_all(self, llm: LLM, cand: Candidate, context: int | None = None) -> dict:
        """Every quantity: kind -> (Estimate | None, parts, missing)."""
        return {k: self.predict(llm, cand, k, context) for k in KINDS}


def fixed_component(comp: tuple, budget: int | None, context: int | None) -> ComponentLoss | None:
    """The losses no table decides: a 16-bit dense reference part, and an eviction policy whose budget
    holds the whole context (it keeps every token)."""
    if comp[0] == "precision" and comp[1] in BASE_PRECISIONS or comp[0] == "kv" and comp[1] in BASE_KV \
            or comp == ("sparsity", DEFAULT_SPARSITY):
        return ComponentLoss(comp, 0.0, 0.0, 0.0, "reference", "-", ("16-bit dense reference",))
    if comp[0] == "kv" and comp[1] in EVICTION and budget and context is not None and context <= budget:
        return ComponentLoss(comp, 0.0, 0.0, 0.0, "within-budget", "-",
                             (f"eviction keeps every token while the context ({context}) fits the budget ({budget})",))
    return None


def paper_of(r: Row) -> str:
    return r.cite.split(",")[0]


WIDTH_RULES = ("exact", "variant", "family", "transfer", "measured-small")


def backs_a_bound(est: Estimate | None) -> bool:
    """Whether a quality figure may pass a bound: published or transferred, not only this project's small
    trained model (source ``measured``: shown, but it does not carry to a real LLM)."""
    return est is not None and est.source != "measured"


def _row_llm(r: Row):
    """The model of a published row as the lookup rules see it (rows may name models outside the catalog)."""
    from types import SimpleNamespace
    return SimpleNamespace(id=r.model, family=r.family, published_params_b=r.size_b or 7.0, num_hidden_layers=32,
                           raw={})


def lookup_of(q: "QualityModel", r: Row) -> ComponentLoss | None:
    """What the lookup rules answer for a published row's own model, component, budget and quantity (an
    eviction row that states its context: the law in context/budget at that context)."""
    law = q._evicted(_row_llm(r), r.component, r.budget, r.kind, r.context, r.metric) if r.context else None
    return law or q._lookup(_row_llm(r), r.component, r.budget, r.kind, r.metric)


def held_out_lookups(published: list[Row], key, make_model, kind: str | None = None, ask=lookup_of):
    """(row, answer) for every published row (of ``kind``) that ``ask(model, row)`` answers (not None; by
    default :func:`lookup_of`), each from ``make_model(training rows)`` built without the row's group
    (``key(row)``: its paper, its model)."""
    for g in sorted({key(r) for r in published if kind is None or r.kind == kind}):
        q = make_model([r for r in published if key(r) != g])
        for r in published:
            if key(r) == g and (kind is None or r.kind == kind):
                c = ask(q, r)
                if c is not None:
                    yield r, c


def calibrate_widths(published: list[Row], measured: list[Row], prefers: dict, coverage: float = 0.9,
                     min_rows: int = 10) -> dict:
    """Relative half-width per lookup rule, and per quantity and rule (``"kind/rule"``) where that has
    ``min_rows``: the ``coverage`` quantile of |held-out - predicted| / max(|predicted|, floor) with each
    paper left out in turn (the regression rule keeps its own interval). A perplexity ratio and a score
    drop in points err differently, so one pooled width would over-cover one and under-cover the other."""
    res: dict[str, list[float]] = {}
    for r, c in held_out_lookups(published, paper_of, lambda train: QualityModel(train, measured, prefers,
                                                                                 learn=False)):
        if c.rule not in WIDTH_RULES:
            continue
        e = abs(max(r.loss, 0.0) - c.loss) / max(abs(c.loss), width_floor(r.kind))
        res.setdefault(c.rule, []).append(e)
        res.setdefault(f"{r.kind}/{c.rule}", []).append(e)
    out = {}
    for rule, v in res.items():
        if len(v) >= min_rows:
            out[rule] = conformal.quantile(v, coverage)
    return out


def _widths_cached(published: list[Row], measured: list[Row], prefers: dict) -> dict:
    from profiles import cache
    key = cache.digest("widths v3: per kind, finite-sample conformal rank", repr([(r.model, r.component, r.budget, r.metric, r.loss, r.cite, r.kind)
                                                    for r in published]),
                       repr(sorted(prefers.items())), repr([(r.model, r.component, r.loss) for r in measured]))
    hit = cache.get("quality-widths", key)
    if hit is not None:
        return hit
    w = calibrate_widths(published, measured, prefers)
    cache.put("quality-widths", key, w)
    return w


@lru_cache(maxsize=2)
def _cached(cat: Catalog) -> QualityModel:
    prefers = {m.id: m.get("quality_prefers") for m in cat.methods.values() if m.get("quality_prefers")}
    pub, meas = rows_from_published(cat.quality_rows), rows_from_small_model()
    return QualityModel(pub, meas, prefers, catalog=cat, widths=_widths_cached(pub, meas, prefers))
