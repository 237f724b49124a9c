"""Pooling a family's quality figures along model size: the evidence-weighted non-increasing fit that keeps the
quality cost model monotone in size (issue 11: a larger model of the same family never loses more)."""
from __future__ import annotations

import math
import statistics

from .quality_rows import ComponentLoss, rule_width, width_floor


def pool_by_size(sizes: list[float], losses: list[float], weights: list[float]) -> list[float]:
    """Weighted least-squares fit of ``losses`` that never grows with ``sizes`` (pool-adjacent-violators;
    models of one size are pooled together): the monotone figures closest to the evidence, each figure
    weighted by ``weights`` (1 / half-width squared of its interval)."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    blocks: list[list] = []  # [size, weighted sum, weight, members]
    for i in order:
        if blocks and blocks[-1][0] == sizes[i]:
            b = blocks[-1]
            b[1] += losses[i] * weights[i]
            b[2] += weights[i]
            b[3].append(i)
        else:
            blocks.append([sizes[i], losses[i] * weights[i], weights[i], [i]])
    out: list[list] = []
    for b in blocks:
        out.append(list(b))
        while len(out) > 1 and out[-2][1] / out[-2][2] < out[-1][1] / out[-1][2] - 1e-15:
            last = out.pop()
            out[-1][1] += last[1]
            out[-1][2] += last[2]
            out[-1][3] += last[3]
    fitted = [0.0] * len(sizes)
    for b in out:
        for i in b[3]:
            fitted[i] = b[1] / b[2]
    return fitted


def size_pooled(q, llm, comp: tuple, budget: int | None, kind: str, raw=None) -> ComponentLoss | None:
    """``llm``'s figure of ``q`` (a :class:`models.quality.QualityModel`) after pooling the family's figures of
    one (component, budget) by size. Only figures of a size's own rows enter the pool (rule exact or variant), each set of rows once (llama3-70b
    and llama3.1-70b answered from the same rows are one point); a model answered from another size's rows
    (rule family) takes the pooled figure of the nearest such size, as the family rule picks its rows.
    ``raw(model)``: a model's figure before pooling (default: the lookup rules, ``q._raw``)."""
    raw = raw or (lambda m: q._raw(m, comp, budget, kind))
    own = raw(llm)
    if own is None or q.catalog is None:
        return own
    # a family either has rows of the component (each member's figure is then exact, variant or family) or
    # none (every member's figure comes from the regression or a transfer, each a point of its own)
    own_rows = own.rule in ("exact", "variant", "family")
    points: dict = {}  # rows (or model) -> (log sizes of the models they answer, figure)
    for m in q.catalog.llms.values():
        f = raw(m) if m.family == llm.family else None
        if f is not None and (f.rule in ("exact", "variant") if own_rows else True):
            key = (f.cites, f.loss) if own_rows else m.id
            points.setdefault(key, ([], f))[0].append(math.log(m.published_params_b))
    if len(points) < 2:
        return own
    keys = list(points)
    sizes = [math.exp(statistics.fmean(points[k][0])) for k in keys]
    # a figure's weight is 1 / half-width^2 of what its own rows leave (printed rounding, spread of the rows),
    # no narrower than what published tables resolve (width_floor: 1% of perplexity, 1 point of score). Not
    # the rule's calibrated width: that one is relative to the figure, so a near-zero row (a 'gain' clipped
    # at 0) would outweigh every other size of the family
    floor = width_floor(kind)
    figs = [points[k][1] for k in keys]
    pooled = pool_by_size(sizes, [f.loss for f in figs],
                          [1.0 / max(f.evidence_half if f.evidence_half is not None else (f.high - f.low) / 2,
                                     floor) ** 2 for f in figs])
    if own.rule == "family":
        d = [abs(math.log(sz / llm.published_params_b)) for sz in sizes]
        v = statistics.fmean(p for p, x in zip(pooled, d) if x == min(d))
    else:
        v = pooled[keys.index((own.cites, own.loss) if own_rows else llm.id)]
    v = max(v, 0.0)
    if abs(v - own.loss) <= 1e-12:
        return own
    others = sorted({m.id for m in q.catalog.llms.values() if m.family == llm.family and m.id != llm.id
                     and raw(m) is not None})
    note = (f"pooled by size with {', '.join(others)} ({v:.4g}, was {own.loss:.4g}): a larger model of the "
            "family may not lose more; each size's own rows weighted by their printed precision")
    # the moved figure carries the width earned by answering one size from the family's other sizes (the family
    # rule's calibrated width; a figure with no rows of its own keeps its rule's), and the interval still holds
    # what the model's own rows say: the union of the two
    rule = "transfer" if own.rule == "exact" else own.rule
    if own_rows or own.loss <= 0:
        wrule = "family" if own_rows else own.rule
        half = max(v, floor) * rule_width(q.widths, kind, wrule)[0]
        low, high = max(v - half, 0.0), v + half
    else:  # a regression's or a transfer's multiplicative interval, moved with its figure
        low, high = own.low * v / own.loss, own.high * v / own.loss
    return ComponentLoss(comp, v, min(own.low, low), max(own.high, high), rule, own.metric, own.cites + (note,))
