"""Human rendering of engine results (``--json`` bypasses this): tables and lines of :mod:`advisor.tables`."""
from __future__ import annotations

from profiles import load

from models.candidate import DEFAULT_KV, DEFAULT_SPARSITY
from models.estimate import Estimate

from .engine import Recommendation
from .tables import Console, Table


def console() -> Console:
    """Standard output: the terminal's width and ANSI styles on a terminal, 150 columns of plain text when
    piped or captured."""
    return Console()


def _fmt(e: Estimate | None, scale: float = 1.0, digits: int = 3) -> tuple[str, str, str]:
    if e is None:
        return "unknown", "", ""
    f = lambda x: f"{x * scale:.{digits}g}"  # noqa: E731
    return f(e.value), f"{f(e.low)} - {f(e.high)}", e.source


def render_recommendation(rec: Recommendation, deploy: dict, console: Console) -> None:
    req = rec.request
    best = rec.best
    console.print(f"[bold]{rec.model_id}[/] on [bold]{rec.gpu_id}[/] x{req.num_gpus} | context {req.context} "
                  f"(gen {req.gen_len}) | batch {req.batch} | engine {req.engine}"
                  + (f" ({req.backend})" if req.engine == load().harness_engine else "")
                  + f" | objective {req.objective}"
                  + (f" | max ppl delta {req.max_quality_loss * 100:.2f}%" if req.max_quality_loss is not None else "")
                  + (f" | max accuracy drop {req.max_accuracy_drop:g} pt" if req.max_accuracy_drop is not None else "")
                  + (f" | max long-context drop {req.max_longctx_drop:g} pt" if req.max_longctx_drop is not None else ""))
    if best is None:
        console.print("[bold red]No feasible candidate.[/]")
    else:
        p = best.prediction
        console.print(f"\n[bold green]Recommended:[/] [bold]{p.candidate.label}[/] on [bold]{p.engine}[/]")
        t = Table(show_header=True, header_style="bold")
        for col in ("metric", "predicted", "~90% interval", "source"):
            t.add_column(col)
        rows = [
            ("decode throughput (tok/s, batch)", _fmt(p.speed.decode_tok_s)),
            ("per-sequence speed (tok/s)", _fmt(p.speed.per_seq_tok_s)),
            ("prefill latency of one prompt (ms)", _fmt(p.speed.prefill_ms)),
            ("decode step / TPOT (ms)", _fmt(p.speed.decode_step_ms)),
            ("memory per GPU (GB)", _fmt(p.memory.per_gpu_gb)),
            ("energy (J/token)", _fmt(p.j_per_token)),
            (f"power per GPU (W; {req.num_gpus} GPU{'s' if req.num_gpus > 1 else ''})",
             (f"{p.power_w / req.num_gpus:.3g}", "", "fitted power model")),
            ("energy per 1,000 requests (Wh, decode)", _fmt(p.j_per_token, req.gen_len * 1000 / 3600)),
            ("cost (USD / M tokens)", _fmt(p.usd_per_mtok)),
        ]
        for kind, (est, _, _) in p.quality.items():
            label = {"ppl_delta": "perplexity increase (%)", "accuracy_drop": "task-accuracy drop (points)",
                     "longctx_drop": "long-context drop (points)"}[kind]
            rows.append((label, _fmt(est, 100 if kind == "ppl_delta" else 1) if est is not None
                         else ("unknown", "", "no row supports it")))
        for name, (v, iv, src) in rows:
            t.add_row(name, v, iv, src)
        if p.eor is not None:
            t.add_row("EOR (quality kept / Wh, per 1k tokens)", f"{p.eor:.3g}", "", "from the rows above")
            t.add_row("TWEOR (EOR / request latency s)", f"{p.tweor:.3g}", "", "from the rows above")
        console.print(t)
        console.print(f"[dim]speed: {p.speed_model} cost model; roofline floor {p.speed.roofline_decode_ms:.3g} ms/step "
                      f"(predicted {p.speed.decode_step_ms.value:.3g}); quality: {p.quality_loss.detail if p.quality_loss else 'n/a'}[/]")
        for c in p.quality_parts:
            if c.rule != "reference":
                console.print(f"[dim]  perplexity, {c.component[1]}: {c.loss * 100:+.2f}% ({c.rule}, {c.metric}) from "
                              f"{'; '.join(c.cites)[:300]}[/]")
        for n in p.speed.notes:
            console.print(f"[dim]  note: {n}[/]")
    if rec.ranked[1:req.top]:
        t = Table(title="Next best", show_header=True, header_style="bold")
        for col in ("#", "candidate", "tok/s", "prefill ms", "GB", "J/tok", "loss %", "why it lost"):
            t.add_column(col)
        for e in rec.ranked[1:req.top]:
            p = e.prediction
            t.add_row(str(e.rank), p.candidate.short + (f" [{p.engine}]" if req.engine == "auto" else ""), f"{p.speed.decode_tok_s.value:.4g}",
                      f"{p.speed.prefill_ms.value:.4g}", f"{p.memory.per_gpu_gb.value:.3g}",
                      f"{p.j_per_token.value:.3g}",
                      f"{p.quality_loss.value * 100:.2f}" if p.quality_loss else "?", e.lost_because or "")
        console.print(t)
    t = Table(title="Rejected candidates (first constraint that blocked each)", show_header=True, header_style="bold")
    for col in ("constraint", "count", "example"):
        t.add_column(col)
    for c in ("hardware", "memory", "quality", "speed"):
        rej = rec.rejected(c)
        if rej:
            first = rej[0]
            ex = f"{first[0].label}: {first[1]}" if c == "hardware" else f"{first.candidate.label}: {first.reason}"
            t.add_row(c, str(len(rej)), ex)
    console.print(t)
    _explain_named(rec, console)
    if rec.relaxations:
        console.print("[bold]What would make a candidate feasible:[/]")
        for r in rec.relaxations:
            console.print(f"  - {r}")
    if deploy:
        console.print(f"\n[bold]Deploy ({deploy['engine']}):[/]")
        console.print(deploy["command"], markup=False)
        for r in deploy.get("requires") or []:
            console.print(f"  requires: {r}", markup=False)


def _explain_named(rec: Recommendation, console: Console) -> None:
    """Say why the dense variant of each precision lost, so no method disappears silently."""
    if rec.best is None:
        return
    seen = set()
    for e in rec.evaluated:
        c = e.candidate
        if c.sparsity != DEFAULT_SPARSITY or c.kv != DEFAULT_KV or c.precision in seen or e is rec.best:
            continue
        seen.add(c.precision)
        why = e.reason if e.rejected_by else e.lost_because
        console.print(f"[dim]  {c.precision}: {'rejected (' + e.rejected_by + '): ' if e.rejected_by else ''}{why}[/]")
    for c, r in rec.hardware_rejected:
        if c.sparsity == DEFAULT_SPARSITY and c.kv == DEFAULT_KV and c.precision not in seen:
            seen.add(c.precision)
            console.print(f"[dim]  {c.precision}: rejected (hardware): {r}[/]")
