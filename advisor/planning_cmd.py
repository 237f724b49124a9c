"""`advisor plan`, `compare` and `report`, with the options they share (durations, GPU lists, engine and
method pins)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import Finite, default_engine, engine_list


def write_atomic(path: Path, text: str, opt: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (a reader never sees half a file);
    a missing or unwritable folder is an input error naming the option."""
    from profiles.cache import write_text_atomic

    from .options import _err
    folder = path.resolve().parent
    if not folder.is_dir():
        _err(f"{opt} {path}: the folder {folder} does not exist")
    try:
        write_text_atomic(path, text)
    except OSError as e:
        _err(f"{opt} {path}: cannot write ({e.strerror})")


def parse_duration(text: str, name: str) -> float:
    """'1s', '50ms', '0.5' (seconds) -> seconds. A bare number is seconds, and a bare number of 1 or more is
    said on stderr (``--tpot-p95 50`` is 50 s, not 50 ms)."""
    s = str(text).strip().lower()
    try:
        if s.endswith("ms"):
            return float(s[:-2]) / 1000
        if s.endswith("s"):
            return float(s[:-1])
        v = float(s)
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a duration: use e.g. 1s, 50ms or 0.5", param_hint=name) from None
    if v >= 1:
        click.echo(f"note: {name} {s} read as {v:g} s (write {s}ms for milliseconds)", err=True)
    return v


def _gpu_list(text: str | None) -> tuple:
    """Comma-separated GPU ids; None -> () (the command's default). An empty value is refused."""
    if text is None:
        return ()
    out = tuple(x.strip() for x in text.split(",") if x.strip())
    if not out:
        from .options import _err
        _err("--gpus: give GPU ids separated by commas, or all (advisor profiles list gpus)")
    return out


def _model_gpus_quality_context(gpus_default: str, gpus_help: str):
    """The --model, --gpus, --max-ppl-delta and --context options that compare and report share."""
    def apply(f):
        for opt in reversed((click.option("--model", required=True),
                             click.option("--gpus", default=gpus_default, show_default=True, help=gpus_help),
                             click.option("--max-ppl-delta", default="2%", show_default=True),
                             click.option("--context", type=click.IntRange(2, 1 << 20), default=4096, show_default=True))):
            f = opt(f)
        return f
    return apply


def _accuracy_option(f):
    return click.option("--max-accuracy-drop", "max_accuracy_drop", default=None,
                        help="Largest task-accuracy drop in points (MMLU, Open LLM average, zero-shot average), "
                             "e.g. 1; a candidate with no published figure is refused.")(f)


def _engine_pins_json(f):
    """--engine, the method pins (--precision, --sparsity, --kv) and --json, as plan and compare declare them."""
    for opt in reversed((
            click.option("--engine", default=default_engine(), show_default=True, help=f"{engine_list()}, or auto."),
            click.option("--precision", "pin_precision", default=None, help="Only this precision (a method id)."),
            click.option("--sparsity", "pin_sparsity", default=None,
                         help="Only this sparsity (dense, 2:4-wanda, drop-8, ...)."),
            click.option("--kv", "pin_kv", default=None, help="Only this KV policy (kv-fp16, kv-fp8, snapkv, ...)."),
            click.option("--json", "as_json", is_flag=True))):
        f = opt(f)
    return f


def register_planning(main: click.Group) -> None:
    from .options import EXIT_INFEASIBLE, _emit_json, _err, parse_fraction, parse_points

    @main.command()
    @click.option("--model", required=True)
    @click.option("--qps", type=Finite(0, 1e6, lo_open=True), required=True, help="Requests per second to serve.")
    @click.option("--prompt-len", type=click.IntRange(1, 1 << 20), default=1024, show_default=True)
    @click.option("--gen-len", type=click.IntRange(1, 1 << 20), default=256, show_default=True)
    @click.option("--ttft-p95", default="1s", show_default=True,
                  help="95th-percentile time to first token: 1s, 500ms, or a bare number of seconds.")
    @click.option("--tpot-p95", default="50ms", show_default=True,
                  help="95th-percentile time per output token: 50ms, 0.05s, or a bare number of SECONDS.")
    @click.option("--gpus", default=None, help="Comma-separated GPU ids (default: all in the catalog).")
    @click.option("--max-ppl-delta", default="2%", show_default=True)
    @click.option("--grid-gco2-per-kwh", type=Finite(0, 5000), default=None,
                  help="Grid carbon intensity (g CO2 / kWh) for the CO2 column; none shown without it.")
    @_accuracy_option
    @_engine_pins_json
    def plan(model, qps, prompt_len, gen_len, ttft_p95, tpot_p95, gpus, max_ppl_delta, grid_gco2_per_kwh,
             max_accuracy_drop, engine, pin_precision, pin_sparsity, pin_kv, as_json):
        """Capacity: GPUs, replicas and method per GPU type for a load and latency targets."""
        from profiles import UnknownProfileError, harness_engine_id

        from .engine import RequestError
        from .plan import HOURS_PER_MONTH, PlanRequest, plan as run, plan_dict
        from .service import harness_note, speed_model_or_none
        sm, note = speed_model_or_none()
        req = PlanRequest(model, qps, prompt_len, gen_len, parse_duration(ttft_p95, "--ttft-p95"),
                          parse_duration(tpot_p95, "--tpot-p95"), _gpu_list(gpus), parse_fraction(max_ppl_delta),
                          grid_gco2_per_kwh, engine=engine, pin_precision=pin_precision, pin_sparsity=pin_sparsity,
                          pin_kv=pin_kv, max_accuracy_drop=parse_points(max_accuracy_drop, "--max-accuracy-drop"))
        try:
            plans = run(req, speed_model=sm)
        except (UnknownProfileError, RequestError) as e:
            _err(str(e))
        engines = {p.best.engine for p in plans if p.best is not None}
        if harness_note(note, engines):
            click.echo(f"note: {note}", err=True)
        if as_json:
            _emit_json({"request": req.__dict__, "plans": plan_dict(plans)})
        else:
            from .tables import Table

            from .render import console
            t = Table(title=f"{model}: {qps:g} req/s, {prompt_len}+{gen_len} tokens, TTFT p95 <= {req.ttft_p95_s:g} s, "
                            f"TPOT p95 <= {req.tpot_p95_s * 1e3:g} ms", header_style="bold")
            for col in ("gpu", "engine", "method", "conc.", "TP", "replicas", "GPUs", "$/month", "fleet kW", "MWh/month",
                        "J/tok", "CO2 kg/mo", "TTFT p95 s", "TPOT ms", "link"):
                t.add_column(col)
            for p in plans:
                o = p.best
                if o is None:
                    why = "; ".join(f"{k}: {v}" for k, v in p.blocked.items())
                    t.add_row(p.gpu, "", f"[red]infeasible[/] {why[:120]}", *[""] * 12)
                    continue
                t.add_row(o.gpu, o.engine, o.candidate.replace(" + dense", "").replace(" + kv-fp16", ""), str(o.concurrency), str(o.tp), str(o.replicas), str(o.gpus),
                          f"{o.usd_per_month:,.0f}" if o.usd_per_month is not None else "no price",
                          f"{o.kwh_per_month / HOURS_PER_MONTH:,.2f}", f"{o.kwh_per_month / 1000:,.2f}",
                          f"{o.j_per_token:.3g}" if o.j_per_token else "-",
                          f"{o.co2_kg_per_month:,.0f}" if o.co2_kg_per_month is not None else "-",
                          f"{o.ttft_p95_s:.3g}", f"{o.tpot_s * 1e3:.3g}", o.interconnect)
            console().print(t)
            speed = ", ".join(f"{e} cost model" if e != harness_engine_id() else f"{sm and 'fitted' or 'analytical'} "
                              "harness cost model" for e in sorted(engines)) or "no feasible plan"
            click.echo(f"latency model: continuous batching, decode step at full concurrency ({speed}), whole-prompt "
                       "prefill between steps, M/M/c wait for a slot (conservative vs a discrete-event simulation); "
                       "$ from each profile's dated cloud price", err=True)
        if not any(p.best for p in plans):
            sys.exit(EXIT_INFEASIBLE)

    @main.command()
    @_model_gpus_quality_context("all", "Comma-separated GPU ids, or all.")
    @click.option("--gen-len", type=click.IntRange(1, 1 << 20), default=256, show_default=True)
    @click.option("--batch", type=click.IntRange(1, 4096), default=64, show_default=True,
                  help="Largest serving concurrency searched (halved per GPU until something fits the memory "
                       "and --max-tpot).")
    @click.option("--max-tpot", default="50ms", show_default=True,
                  help="Time per output token each user may see: 50ms, 0.05s, a bare number of SECONDS, or none.")
    @click.option("--usd-per-kwh", type=Finite(0, 100), default=None,
                  help="Your electricity price, subtracted from rent savings in the payback.")
    @_accuracy_option
    @_engine_pins_json
    def compare(model, gpus, max_ppl_delta, context, gen_len, batch, max_tpot, usd_per_kwh, max_accuracy_drop, engine,
                pin_precision, pin_sparsity, pin_kv, as_json):
        """Procurement: GPUs ranked by $ per million tokens at a quality bound, with payback."""
        from dataclasses import asdict

        from profiles import UnknownProfileError

        from .engine import RequestError
        from .plan import compare as run
        from .service import harness_note, speed_model_or_none
        sm, note = speed_model_or_none()
        try:
            tpot = None if str(max_tpot).strip().lower() == "none" else parse_duration(max_tpot, "--max-tpot")
            if tpot is not None and not (1e-4 <= tpot <= 60):
                raise click.BadParameter(f"'{max_tpot}': give a time per token between 0.1ms and 60s, or none",
                                         param_hint="--max-tpot")
            rows = run(model, _gpu_list(gpus) or ("all",), parse_fraction(max_ppl_delta), context, gen_len, batch,
                       usd_per_kwh, sm, engine=engine, pins={k: v for k, v in (("precision", pin_precision),
                                                                               ("sparsity", pin_sparsity),
                                                                               ("kv", pin_kv)) if v},
                       max_tpot_s=tpot, max_accuracy_drop=parse_points(max_accuracy_drop, "--max-accuracy-drop"))
        except (UnknownProfileError, RequestError) as e:
            _err(str(e))
        if harness_note(note, {r.engine for r in rows}):
            click.echo(f"note: {note}", err=True)
        if as_json:
            _emit_json([asdict(r) for r in rows])
            return
        from .render import console
        from .tables import Table
        bound = f", TPOT <= {tpot * 1e3:g} ms" if tpot else ""
        t = Table(title=f"{model}: cheapest method per GPU at quality loss <= {max_ppl_delta}, context {context}{bound}",
                  header_style="bold")
        for col in ("gpu", "GPUs", "engine", "method", "batch", "tok/s", "TPOT ms", "$/Mtok [90%]", "J/tok", "tok/J", "loss %",
                    "list $", "payback mo", "rows"):
            t.add_column(col)
        for r in rows:
            if r.candidate is None:
                t.add_row(r.gpu, "", "", f"[red]infeasible[/] {(r.reason or '')[:90]}", *[""] * 10)
                continue
            iv = r.usd_per_mtok_interval
            t.add_row(r.gpu, str(r.num_gpus), r.engine or "", r.candidate.replace(" + dense", "").replace(" + kv-fp16", ""),
                      str(r.batch), f"{r.decode_tok_s:,.0f}", f"{r.tpot_ms:.3g}" if r.tpot_ms else "-",
                      (f"{r.usd_per_mtok:.3g} [{iv[0]:.2g}-{iv[1]:.2g}]" if iv else f"{r.usd_per_mtok:.3g}")
                      if r.usd_per_mtok else "no price",
                      f"{r.j_per_token:.3g}" if r.j_per_token else "-", f"{r.tokens_per_joule:.3g}",
                      f"{r.quality_loss * 100:.2f}" if r.quality_loss is not None else "?",
                      f"{r.list_price_usd:,.0f}" if r.list_price_usd else "-",
                      f"{r.payback_months:.1f}" if r.payback_months is not None else "-",
                      "yes" if r.backed else "[yellow]none[/]")
        console().print(t)
        if any(not r.backed for r in rows if r.candidate):
            click.echo("rows = none: no measured or published row of that engine on that GPU; its figures come from "
                       "other GPUs' efficiencies (wider intervals), so it ranks after the GPUs that have rows",
                       err=True)


def register_report(main: click.Group) -> None:
    from .options import _emit_json, _err, parse_fraction

    @main.command()
    @_model_gpus_quality_context("l4,a100-80g-sxm,h100-sxm", "Comma-separated GPU ids.")
    @click.option("--batch", type=click.IntRange(1, 4096), default=8, show_default=True)
    @click.option("--out", type=click.Path(dir_okay=False), default="advisor-report.html", show_default=True)
    @click.option("--engine", default=default_engine(), show_default=True, help=f"{engine_list()}.")
    @click.option("--json", "as_json", is_flag=True, help="Print where the report went, as JSON.")
    def report(model, gpus, max_ppl_delta, context, batch, out, engine, as_json):
        """One self-contained HTML page: Pareto front, roofline per GPU, capacity curves."""
        from pathlib import Path

        from profiles import UnknownProfileError

        from .engine import RequestError
        from .report import build_report
        try:
            page = build_report(model, list(_gpu_list(gpus)), parse_fraction(max_ppl_delta), context, batch,
                                engine=engine)
        except (UnknownProfileError, RequestError) as e:
            _err(str(e))
        write_atomic(Path(out), page, "--out")
        if as_json:
            _emit_json({"report": str(Path(out).resolve()), "bytes": len(page)})
        else:
            click.echo(f"wrote {out} ({len(page) // 1024} KiB, opens offline)")
