"""An eviction policy's loss as a law in context / budget (issue 11: KV policies).

An eviction policy (SnapKV, PyramidKV, H2O, StreamingLLM) keeps ``budget`` tokens of KV per layer. While the
context fits the budget nothing is evicted and nothing is lost (``quality.fixed_component``). Past it, what is
lost grows with how much of the context is evicted: the law here reads a published table (one model, one
policy, several budgets, at the table's own context ``Row.context``) as a curve of the loss against
x = ln(context / budget), non-decreasing in x and 0 at x = 0, and answers a query's (context, budget) at its own
x by linear interpolation along the curve. So a budget of 2,048 tokens at a 4,096-token context loses what the
table shows between its full cache and its 2,048-token budget at ~8k tokens, and the same budget at 128k tokens
loses what the table shows for its smallest budgets (a 64-token budget at ~8k is the same ratio as 1,024 at
128k). Past the table's largest x the curve continues along its last segment's slope (capped at 100 points) and
the interval doubles, as a budget below every published one does in the lookup rules.

The table's context is the evaluation's prompt cap (PyramidKV's LongBench script: 7,950 tokens for Llama-3, 31,500
for Mistral), an upper bound of the prompts it ran; the law therefore errs towards more loss at a given ratio
for short prompts. Rows without a stated context keep the budget lookup (``quality._pick_budget``).
"""
from __future__ import annotations

import math
import statistics

from .quality_pool import pool_by_size
from .quality_rows import ComponentLoss, Row, _pick_metric, nearest_size, rule_pools, rule_width, width_floor

MAX_POINTS = 100.0  # a score cannot drop by more than its whole scale


def curve_at(points: list[tuple[float, float]], x: float) -> tuple[float, bool]:
    """The loss at ``x`` on the non-decreasing curve through (0, 0) and ``points`` (x, loss), and whether ``x``
    lies past the last published point (extrapolated along the last segment's slope)."""
    pts = sorted([(0.0, 0.0)] + [(px, max(py, 0.0)) for px, py in points if px > 0])
    xs = [p[0] for p in pts]
    # non-decreasing in x: the size pooling's non-increasing fit along -x, equal weights
    ys = pool_by_size([-x for x in xs], [p[1] for p in pts], [1.0] * len(pts))
    if x <= xs[-1]:
        for i in range(1, len(xs)):
            if x <= xs[i]:
                x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
                return (y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)), False
        return ys[-1], False
    i = len(xs) - 2
    while i > 0 and xs[i] == xs[-1]:
        i -= 1
    slope = (ys[-1] - ys[i]) / (xs[-1] - xs[i]) if xs[-1] > xs[i] else 0.0
    return min(ys[-1] + slope * (x - xs[-1]), MAX_POINTS), True


def evict_law(published: list[Row], widths: dict, llm, comp: tuple, budget: int, kind: str, context: int,
              metric: str | None = None) -> ComponentLoss | None:
    """``comp``'s loss of quantity ``kind`` for ``llm`` at ``context`` tokens and a ``budget``-token cache, from
    the tables of ``published`` rows that state their context (None where no such table exists). Each model's
    table is one curve; the pool's curves answer by their median, as the lookup rules pool rows."""
    rows = [r for r in published if r.component == comp and r.kind == kind and r.context and r.budget]
    if not rows or context <= budget:
        return None
    x = math.log(context / budget)
    for rule, pool in rule_pools(rows, llm):
        if not pool:
            continue
        pool = _pick_metric(pool, metric)
        if rule == "family":
            pool = nearest_size(pool, llm.published_params_b)
        curves: dict = {}
        for r in pool:
            curves.setdefault((r.model, r.cite, r.context), []).append(r)
        answers = [curve_at([(math.log(r.context / r.budget), r.loss) for r in rs], x) for rs in curves.values()]
        losses = [a[0] for a in answers]
        loss = statistics.median(losses)
        beyond = any(a[1] for a in answers)
        width = rule_width(widths, kind, rule)[0] * (2.0 if beyond else 1.0)
        half = max(max(loss, width_floor(kind)) * width, (max(losses) - min(losses)) / 2)
        ctxs = sorted({r.context for r in pool})
        note = (f"law in context/budget: ln({context}/{budget}) = {x:.2f} on the published curve of "
                f"{len(curves)} table(s) at {'/'.join(str(c) for c in ctxs)} tokens"
                + (", extrapolated past its smallest budget" if beyond else ""))
        return ComponentLoss(comp, loss, max(loss - half, 0.0), loss + half, rule, pool[0].metric,
                             tuple(sorted({r.cite for r in pool})) + (note,),
                             (max(losses) - min(losses)) / 2)
    return None
