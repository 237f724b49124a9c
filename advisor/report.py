"""`advisor report`: one self-contained HTML page (inline SVG, no network) with the Pareto front of
speed, quality and energy, a roofline per GPU, and capacity curves."""
from __future__ import annotations

import html
import math

from profiles import Catalog, load
from profiles.dtypes import dtype16

from models.candidate import Candidate, Scenario
from models.efficiency import precisions as harness_precisions
from models.roofline import decode_step, peak_flops, prefill_step
from models.speed import predict_speed

from .engine import Request, recommend
from .plan import PlanRequest, plan

W, H, PAD = 560, 360, 50
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _axes(xs, ys, logx=True, logy=True):
    f = (lambda v: math.log10(v)) if logx else (lambda v: v)
    g = (lambda v: math.log10(v)) if logy else (lambda v: v)
    x0, x1 = min(map(f, xs)), max(map(f, xs))
    y0, y1 = min(map(g, ys)), max(map(g, ys))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    sx = lambda v: PAD + (f(v) - x0) / (x1 - x0) * (W - 2 * PAD)  # noqa: E731
    sy = lambda v: H - PAD - (g(v) - y0) / (y1 - y0) * (H - 2 * PAD)  # noqa: E731
    return sx, sy, (x0, x1, y0, y1)


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Tick positions in axis units (log10 units on a log axis): decades, with 2 and 5 when few decades
    show; on a linear axis 1/2/5 x 10^k steps, about five ticks."""
    if log:
        out = [float(k) for k in range(math.floor(lo), math.ceil(hi) + 1) if lo - 1e-9 <= k <= hi + 1e-9]
        if len(out) < 3:
            out = sorted({math.log10(m * 10 ** k) for k in range(math.floor(lo) - 1, math.ceil(hi) + 1)
                          for m in (1, 2, 5) if lo - 1e-9 <= math.log10(m * 10 ** k) <= hi + 1e-9})
        if len(out) < 3:  # a narrow range: evenly spaced round values, placed on the log axis
            out = [math.log10(v) for v in _ticks(10 ** lo, 10 ** hi, False) if v > 0]
        return out
    raw = (hi - lo) / 5 or 1.0
    mag = 10 ** math.floor(math.log10(raw))
    step = max(m * mag for m in (1, 2, 5) if m * mag <= raw)  # 5 to 10 ticks
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _fmt_tick(v: float, log: bool) -> str:
    x = 10 ** v if log else v
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-2:
        e = math.floor(math.log10(abs(x)))
        m = x / 10 ** e
        return f"{m:g}e{e}"
    return f"{x:g}"


def legend(entries: list[tuple[str, str]], corner: str = "top-left", size: int = 10) -> str:
    """Entries (label, colour) in a white box inside a corner of the plot, sized to the longest label (about
    0.6 x font size per character), so it never leaves the chart."""
    if not entries:
        return ""
    width = min(W - 2 * PAD - 12, 14 + 0.6 * size * max(len(t) for t, _ in entries))
    height = 4 + (size + 3) * len(entries)
    x = PAD + 6 if corner.endswith("left") else W - PAD - 6 - width
    y = PAD + 6 if corner.startswith("top") else H - PAD - 6 - height
    out = (f'<rect class="legend-box" x="{x:.0f}" y="{y:.0f}" width="{width:.0f}" height="{height:.0f}" '
           f'fill="white" fill-opacity="0.85" stroke="#bbb"/>')
    for i, (t, col) in enumerate(entries):
        ty = y + (size + 3) * (i + 1)
        out += (f'<rect x="{x + 4:.0f}" y="{ty - size + 2:.0f}" width="7" height="7" fill="{col}"/>'
                f'<text class="legend" x="{x + 14:.0f}" y="{ty:.0f}" font-size="{size}" fill="#222">{html.escape(t)}</text>')
    return out


def _frame(title, xlabel, ylabel, body, rng, logx=True, logy=True) -> str:
    x0, x1, y0, y1 = rng
    sx = lambda v: PAD + (v - x0) / (x1 - x0) * (W - 2 * PAD)  # noqa: E731 - axis units to pixels
    sy = lambda v: H - PAD - (v - y0) / (y1 - y0) * (H - 2 * PAD)  # noqa: E731
    ticks = ""
    for v in _ticks(x0, x1, logx):
        ticks += (f'<line x1="{sx(v):.1f}" y1="{PAD}" x2="{sx(v):.1f}" y2="{H - PAD}" stroke="#eee"/>'
                  f'<text class="tick xtick" x="{sx(v):.1f}" y="{H - PAD + 14}" font-size="10" '
                  f'text-anchor="middle">{_fmt_tick(v, logx)}</text>')
    for v in _ticks(y0, y1, logy):
        ticks += (f'<line x1="{PAD}" y1="{sy(v):.1f}" x2="{W - PAD}" y2="{sy(v):.1f}" stroke="#eee"/>'
                  f'<text class="tick ytick" x="{PAD - 4}" y="{sy(v) + 3:.1f}" font-size="10" '
                  f'text-anchor="end">{_fmt_tick(v, logy)}</text>')
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
            f'aria-label="{html.escape(title)}"><rect width="{W}" height="{H}" fill="white"/>{ticks}'
            f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" fill="none" stroke="#333"/>'
            f'<text x="{PAD}" y="{PAD - 18}" font-weight="bold" font-size="12">{html.escape(title)}</text>'
            f'<text class="axis-label" x="{W / 2}" y="{H - 12}" text-anchor="middle">{html.escape(xlabel)}</text>'
            f'<text class="axis-label" x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" '
            f'text-anchor="middle">{html.escape(ylabel)}</text>{body}</svg>')


def pareto_svg(rec) -> str:
    pts = [e for e in rec.ranked if e.prediction.quality_loss is not None]
    if not pts:
        return "<p>No feasible candidate to plot.</p>"
    xs = [e.prediction.speed.decode_tok_s.value for e in pts]
    ys = [max(e.prediction.quality_loss.value * 100, 0.01) for e in pts]
    js = [e.prediction.j_per_token.value for e in pts]
    sx, sy, rng = _axes(xs, ys)
    jlo, jhi = min(js), max(js)
    body = ""
    for e, x, y, j in zip(pts, xs, ys, js):
        t = (j - jlo) / (jhi - jlo) if jhi > jlo else 0.5
        col = f"rgb({int(40 + 200 * t)},{int(160 - 100 * t)},{int(220 - 180 * t)})"
        r = 6 if e.pareto else 3.5
        body += (f'<circle class="pt{" pareto" if e.pareto else ""}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{r}" '
                 f'fill="{col}" stroke="{"black" if e.pareto else "none"}"><title>{html.escape(e.candidate.label)}: '
                 f'{x:.4g} tok/s, loss {y:.3g}%, {j:.3g} J/token</title></circle>')
    return _frame(f"{rec.gpu_id}: speed vs quality (colour J/token: blue low, red high; ringed: Pareto)",
                  "decode tok/s (log)", "quality loss %, floor 0.01 (log)", body, rng)


def roofline_svg(cat: Catalog, gpu_id: str, model: str) -> str:
    gpu, llm = cat.gpus[gpu_id], cat.llm(model)
    peak = peak_flops(gpu, dtype16(gpu))
    bw = gpu.mem_bw_gbps * 1e9
    pts = []
    # the unquantized precision in the GPU's 16-bit type, and the most compressed precision the harness's speed
    # model covers (fewest bytes per weight, the first in catalog order: a 4-bit weight-only method)
    d16 = dtype16(gpu)
    plain = next(m.id for m in cat.methods_of("precision") if m.get("torch_dtype") and m.get("matmul_dtype") == d16)
    covered = set(harness_precisions())
    small = min((m for m in cat.methods_of("precision") if m.id in covered), key=lambda m: float(m.get("bytes_per_weight")))
    for prec in (plain, small.id):
        for b in (1, 8, 64):
            cand, sc = Candidate(prec), Scenario(b, 1024, 128)
            for phase, step in (("decode", decode_step(cat, llm, cand, sc)), ("prefill", prefill_step(cat, llm, cand, sc))):
                p = predict_speed(cat, gpu, llm, cand, sc)
                t = (p.decode_step_ms.value if phase == "decode" else p.prefill_ms.value) / 1e3
                pts.append((f"{prec} {phase} b{b}", step.flops / step.bytes, step.flops / t))
    xs = [p[1] for p in pts] + [1e-1, 1e4]
    ys = [p[2] for p in pts] + [peak * 1.2, 1e9]
    sx, sy, rng = _axes(xs, ys)
    ridge = peak / bw
    line = (f'<polyline fill="none" stroke="#555" stroke-width="2" points="{sx(1e-1):.1f},{sy(bw * 1e-1):.1f} '
            f'{sx(ridge):.1f},{sy(peak):.1f} {sx(1e4):.1f},{sy(peak):.1f}"/>')
    body = line + "".join(
        f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{COLORS[i % len(COLORS)]}">'
        f'<title>{html.escape(n)}: {x:.3g} FLOP/byte, {y / 1e12:.3g} TFLOP/s predicted</title></circle>'
        for i, (n, x, y) in enumerate(pts))
    # below the roof at high intensity nothing can sit (points there run near the compute roof)
    body += legend([(n, COLORS[i % len(COLORS)]) for i, (n, _, _) in enumerate(pts)], "bottom-right", size=8)
    return _frame(f"Roofline: {gpu.id} ({gpu.mem_bw_gbps:g} GB/s, {peak / 1e12:.0f} TFLOP/s dense)",
                  "arithmetic intensity, FLOP/byte (log)", "FLOP/s achieved, predicted (log)", body, rng)


def capacity_svg(cat: Catalog, model: str, gpus: list[str], prompt_len: int, gen_len: int,
                 engine: str | None = None) -> str:
    """GPUs needed per load on ``engine`` (None: the catalog's default engine)."""
    engine = cat.default_engine if engine is None else engine
    loads = (1, 2, 5, 10, 20, 50, 100)
    series = {}
    for g in gpus:
        ys = []
        for q in loads:
            p = plan(PlanRequest(model, q, prompt_len, gen_len, gpus=(g,), engine=engine), cat)[0]
            ys.append(p.best.gpus if p.best else None)
        series[g] = ys
    vals = [y for ys in series.values() for y in ys if y]
    if not vals:
        return "<p>No GPU can serve these loads within the default targets.</p>"
    sx, sy, rng = _axes(list(loads), vals + [1])
    body = ""
    for i, (g, ys) in enumerate(series.items()):
        pts = " ".join(f"{sx(q):.1f},{sy(y):.1f}" for q, y in zip(loads, ys) if y)
        body += f'<polyline class="series" fill="none" stroke="{COLORS[i % len(COLORS)]}" stroke-width="2" points="{pts}"/>'
    body += legend([(g, COLORS[i % len(COLORS)]) for i, g in enumerate(series)])
    return _frame(f"GPUs needed for {model} (TTFT p95 1 s, TPOT p95 50 ms)", "requests/s (log)",
                  "GPUs (log)", body, rng)


def build_report(model: str, gpus: list[str], max_quality_loss: float | None = 0.02, context: int = 4096,
                 batch: int = 8, cat: Catalog | None = None, engine: str | None = None) -> str:
    cat = cat or load()
    engine = cat.default_engine if engine is None else engine
    llm = cat.llm(model)
    ids = [g.id for g in cat.gpus.values()] if [str(x).lower() for x in gpus] == ["all"] else \
        [cat.resolve("gpu", g).id for g in gpus]
    sections = []
    for gid in ids:
        rec = recommend(Request(gpu=gid, model=llm.id, max_quality_loss=max_quality_loss, context=context,
                                batch=batch, engine=engine), cat)
        best = rec.best.candidate.label if rec.best else "no feasible candidate"
        sections.append(f'<section><h2>{html.escape(cat.gpus[gid].name)}</h2><p>Recommended at batch {batch}, '
                        f'context {context} on {html.escape(engine)}: <b>{html.escape(best)}</b></p>{pareto_svg(rec)}'
                        f'{roofline_svg(cat, gid, llm.id)}</section>')
    cap = capacity_svg(cat, llm.id, ids, 1024, 256, engine=engine)
    css = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
           "svg.chart{margin:0.5em;border:1px solid #ddd}section{margin-bottom:2em}")
    js = ("document.addEventListener('DOMContentLoaded',function(){var n=document.querySelectorAll('svg.chart')"
          ".length;document.body.setAttribute('data-charts',n);document.body.setAttribute('data-ready','1');});")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>advisor report: {html.escape(llm.id)}"
            f"</title><style>{css}</style><script>{js}</script></head><body><h1>advisor report: {html.escape(llm.id)}</h1>"
            "<p>Every figure here is predicted by the cost models in <code>models/</code> (analytical or fitted); "
            "quality from published results. Hover a point for its numbers. This page loads nothing from the network."
            f"</p>{''.join(sections)}<section><h2>Capacity</h2>{cap}</section></body></html>")
