"""Registration of the commands that live outside the core module (measure, fit, plan, ...)."""
from __future__ import annotations

import sys

import click

from .options import Finite


def register(main: click.Group) -> None:
    @main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                    "help_option_names": []}, add_help_option=False)
    @click.pass_context
    def measure(ctx):
        """Run ground-truth benchmarks on a real GPU (needs the 'measure' extra: torch etc.)."""
        try:
            from measurement.cli import measure_command
        except ImportError as e:
            click.echo(f"error: advisor measure needs the measure extra: pip install 'llm-deploy-advisor[measure]' "
                       f"({e})", err=True)
            raise SystemExit(2)
        measure_command.main(args=ctx.args, prog_name="advisor measure", standalone_mode=True)

    @main.command()
    @click.option("--data", "extra", multiple=True, type=click.Path(exists=True, dir_okay=False),
                  help="Your own measured rows (CSV in the dataset's columns), added to the shipped dataset.")
    @click.option("--out", type=click.Path(dir_okay=False), default=None,
                  help="Write the fitted model (JSON) here; a new file, never one of the inputs or another file.")
    @click.option("--install", is_flag=True,
                  help="Also make the refit the default of recommend, plan and compare (~/.cache/advisor/fitted.json).")
    @click.option("--reset", is_flag=True, help="Remove an installed refit: the shipped cost model is the default again.")
    @click.option("--alpha", type=Finite(0, 1e9), default=100.0, show_default=True, help="Ridge strength.")
    @click.option("--json", "as_json", is_flag=True)
    def fit(extra, out, install, reset, alpha, as_json):
        """Refit the cost model from the shipped dataset plus your rows (seconds; JSON, no pickles). Rows that
        are not physical (non-finite, non-positive, above the roofline by more than 5%) are refused."""
        import json as _json
        from pathlib import Path

        from models.fit_store import user_model_path
        from models.fitted import fit_model, save

        from .options import _err
        if reset:
            p = user_model_path()
            for f in (p, p.with_suffix(".meta.json")):
                f.unlink(missing_ok=True)
            click.echo(f"removed {p}: recommend, plan and compare use the shipped cost model", err=True)
            if as_json:
                click.echo(_json.dumps({"reset": str(p)}))
            return
        if not out and not install:
            _err("fit: name the output with --out FILE.json (and/or --install to make it the default)")
        if out:
            o = Path(out).resolve()
            if any(o == Path(x).resolve() for x in extra):
                _err(f"--out {out} is one of the --data inputs: it is never overwritten")
            if o.exists():
                _err(f"--out {out} exists: fit writes a new file and never overwrites one (remove it or pick "
                     "another name)")
            if o.suffix != ".json":
                _err(f"--out {out}: the fitted model is JSON; name it *.json")
        df = _dataset(extra, physical=True)
        try:
            fitted = fit_model(df, alpha=alpha)
        except ValueError as e:
            click.echo(f"error: {e}", err=True)
            raise SystemExit(2)
        path = side = None
        for target in ([Path(out)] if out else []) + ([user_model_path()] if install else []):
            path, side = save(fitted, target)
        if install:
            click.echo(f"installed as the default cost model: {user_model_path()} (advisor fit --reset undoes it)",
                       err=True)
        if as_json:
            click.echo(_json.dumps({"model": str(path), "sidecar": str(side), **fitted["sidecar"]}, indent=2))
        else:
            click.echo(f"fitted on {fitted['sidecar']['rows']} rows -> {path} (sidecar {side.name})")
            for t, s in fitted["sidecar"]["cv_leave_one_model_out"].items():
                click.echo(f"  {t:12s} leave-one-model-out MAPE {s['mape'] * 100:5.1f}%  "
                           f"90% interval coverage {s['coverage90'] * 100:5.1f}%  (n={s['n']})")

    @main.command()
    @click.option("--data", "extra", multiple=True, type=click.Path(exists=True, dir_okay=False))
    @click.option("--plots", type=click.Path(file_okay=False), default="validation-plots", show_default=True,
                  help="Folder for predicted-vs-measured SVG plots.")
    @click.option("--engine", default=None,
                  help="Validate the engine cost model of vllm, sglang, tensorrt-llm or llama.cpp on its published "
                       "and measured rows, held out by source (instead of the harness model).")
    @click.option("--hold-out", "hold_out", type=click.Choice(["source", "model", "paper"]), default="source",
                  show_default=True, help="With --engine: hold out whole sources, or whole models. With --quality: "
                                          "whole papers (source = paper), or whole models.")
    @click.option("--quality", "quality", is_flag=True,
                  help="Validate the quality cost model on the published rows, held out by paper (or model).")
    @click.option("--energy", "energy", is_flag=True,
                  help="Validate the board-power model: measured NVML rows held out by source (--hold-out source) "
                       "or GPU (--hold-out model is read as gpu here), and published ML.ENERGY J/token rows.")
    @click.option("--multi-gpu", "multi_gpu", is_flag=True,
                  help="Validate the multi-GPU cost model (all-reduce, tensor-parallel decode) on the measured "
                       "multi-GPU rows, held out by TP size and by model.")
    @click.option("--json", "as_json", is_flag=True)
    def validate(extra, plots, engine, hold_out, quality, energy, multi_gpu, as_json):
        """Leave-one-GPU/model/method-out errors and interval coverage; error on published figures."""
        import json as _json
        from pathlib import Path

        if quality:
            _validate_quality("model" if hold_out == "model" else "paper", as_json)
            return
        if energy:
            _validate_energy("gpu" if hold_out == "model" else "source", as_json)
            return
        if multi_gpu:
            _validate_multi_gpu(as_json)
            return
        if engine is not None:
            _validate_engine(engine, as_json, hold_out)
            return

        from models.validate import held_out, published_errors, svg_scatter
        df = _dataset(extra)
        res = held_out(df) if len(df) else {}
        Path(plots).mkdir(parents=True, exist_ok=True)
        report = {"held_out": {}, "published": {}}
        for split, r in res.items():
            if "skipped" in r:
                report["held_out"][split] = r
                continue
            report["held_out"][split] = {"fitted": r["scores"], "analytical_mape": r["analytical"]}
            for t, pairs in r["pairs"].items():
                svg_scatter(pairs, f"{split}: {t}", Path(plots) / f"{split}_{t}.svg")
        pub = published_errors()
        report["published"] = {e: {k: v for k, v in d.items() if k != "rows"} for e, d in pub.items()}
        if as_json:
            click.echo(_json.dumps(report, indent=2))
            return
        for split, r in report["held_out"].items():
            click.echo(f"{split}:")
            if "skipped" in r:
                click.echo(f"  skipped: {r['skipped']}")
                continue
            for t, s in r["fitted"].items():
                click.echo(f"  {t:12s} MAPE {s['mape'] * 100:6.1f}% (analytical, in-sample {r['analytical_mape'].get(t, float('nan')) * 100:6.1f}%)"
                           f"  coverage90 {s['coverage90'] * 100:5.1f}%  n={s['n']}")
                if "tok_s_mape" in s:
                    click.echo(f"  {'decode tok/s':12s} MAPE {s['tok_s_mape'] * 100:6.1f}%")
        click.echo("published third-party decode tok/s (analytical cost model):")
        for e, d in sorted(report["published"].items()):
            click.echo(f"  {e:18s} n={d['n']:3d}  MAPE {d['mape'] * 100:6.1f}%  median {d['median_ape'] * 100:6.1f}%")
        click.echo("(the analytical model's eager-host, KV-read and KV-dequant constants were derived from these rows, "
                   "so its figure is not held out; the fitted figures are)")
        click.echo(f"plots: {plots}/")


def _validate_energy(by: str, as_json: bool) -> None:
    """advisor validate --energy: power held out by source (or GPU); published J/token per GPU."""
    import json as _json

    from profiles import load

    from models.energy_fit import validate as energy_validate
    res = energy_validate(load(), by)
    if as_json:
        click.echo(_json.dumps(res, indent=2))
        return
    click.echo(f"board power, leave-one-{by}-out on {res['rows']} measured NVML rows (one GPU's average W):")
    for g, sc in res["measured"]["groups"].items():
        click.echo(f"  {g:18s} n={sc['n']:4d}  MAPE {sc['mape'] * 100:5.1f}%  median APE {sc['median_ape'] * 100:5.1f}%  "
                   f"90% coverage {sc['coverage90'] * 100:5.1f}%")
    click.echo(f"published J/token (ML.ENERGY v3, vLLM; never fitted; their measured tokens/s), n={res['published_rows']}:")
    for g, sc in res["published_j_per_token"].items():
        click.echo(f"  {g:18s} n={sc['n']:4d}  MAPE {sc['mape'] * 100:5.1f}%  median APE {sc['median_ape'] * 100:5.1f}%  "
                   f"90% coverage {sc['coverage90'] * 100:5.1f}%")
    click.echo("the same rows end to end (advisor.predict: predicted speed x power, as a user gets them):")
    for g, sc in res["end_to_end_j_per_token"].items():
        click.echo(f"  {g:18s} n={sc['n']:4d}  MAPE {sc['mape'] * 100:5.1f}%  median APE {sc['median_ape'] * 100:5.1f}%  "
                   f"90% coverage {sc['coverage90'] * 100:5.1f}%")


def _validate_quality(by: str, as_json: bool) -> None:
    """advisor validate --quality: held-out MAE (points) and 90% coverage per method family and quantity."""
    import json as _json

    from profiles import load

    from models.quality_validate import held_out
    res = held_out(load(), by)
    res["held_out_by"] = by
    if as_json:
        click.echo(_json.dumps(res, indent=2))
        return
    click.echo(f"quality, leave-one-{by}-out (lookup rules; points: of relative perplexity increase for ppl_delta)")
    for kind, fams in res.items():
        if kind == "held_out_by":
            continue
        meta = fams.get("_predicted_of", {})
        click.echo(f"{kind}: {meta.get('predicted', 0)} of {meta.get('rows', 0)} rows predicted")
        for f, sc in fams.items():
            if f.startswith("_"):
                continue
            click.echo(f"  {f:24s} n={sc['n']:3d}  MAE {sc['mae_points']:6.2f} points  90% coverage "
                       f"{sc['coverage90'] * 100:5.1f}%  ({', '.join(sc['rules'])})")


def _validate_multi_gpu(as_json: bool) -> None:
    """advisor validate --multi-gpu: the TP decode model held out by TP size and by model."""
    import json as _json

    from models.tp_model import validate as tp_validate
    res = tp_validate()
    if as_json:
        click.echo(_json.dumps(res, indent=2))
        return
    ar = res["allreduce"]
    click.echo(f"all-reduce: {ar['alpha_us']:.2f} us + ring bytes / {ar['busbw_gbps']:.0f} GB/s "
               f"(n={ar['rows']}, in-sample median APE {ar['median_ape'] * 100:.1f}%)")
    for split in ("leave_one_num_gpus_out", "leave_one_model_out"):
        r = res["decode"][split]
        a = r["all"]
        click.echo(f"decode step, {split.replace('_', '-')}: n={a['n']} median APE {a['median_ape'] * 100:.1f}%  "
                   f"MAPE {a['mape'] * 100:.1f}%  90% coverage {a['coverage90'] * 100:.0f}%")
        for g, sc in r["groups"].items():
            click.echo(f"  {g:14s} n={sc['n']:3d}  median APE {sc['median_ape'] * 100:5.1f}%  "
                       f"coverage {sc['coverage90'] * 100:5.1f}%  interval x/{sc['interval_factor']:.2f}")
    click.echo(f"rows: {', '.join(res['rows']['sources'])} (random weights, H200 x1 and x2, NVLink)")


def _validate_engine(engine: str, as_json: bool, by: str = "source") -> None:
    """advisor validate --engine X: leave-one-source-out (or -model-out) errors and nested 90% coverage."""
    import json as _json

    from profiles import UnknownProfileError, load

    from measurement.engine_rows import load_engine_rows
    from models.engine_fit import ENGINES_FITTED, design, validate_engine
    try:
        eid = load().resolve("engine", engine).id
    except UnknownProfileError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2)
    if eid not in ENGINES_FITTED:
        click.echo(f"error: --engine {eid}: the engine cost models are {', '.join(ENGINES_FITTED)} "
                   "(the harness model is validated without --engine)", err=True)
        raise SystemExit(2)
    click.echo(f"validating {eid}: one fit per held-out source, nested interval folds (minutes for large sets)",
               err=True)
    import numpy as np

    from models.peer_aic import side_by_side
    rows = load_engine_rows()
    cat = load()
    d = design(rows, eid, cat)
    res = validate_engine(d, by=by)
    pairs = res.pop("pairs")
    res["engine"] = eid
    res["held_out_by"] = (f"{by} (leave-one-{by}-out: every row of the group leaves the fit); intervals from the "
                          f"other groups only (nested)")
    res["peers"] = {"aiconfigurator": side_by_side(d, rows, cat, np.asarray(pairs["pred"], float))}
    if as_json:
        click.echo(_json.dumps(res, indent=2))
        return
    click.echo(f"{eid}: {res['rows']} rows from {res['sources']} sources (skipped: {res['skipped']})")
    for kind in ("published", "measured"):
        for g, sc in (res.get(kind) or {}).items():
            click.echo(f"  {kind:9s} {g:10s} n={sc['n']:5d}  MAPE {sc['mape'] * 100:6.1f}%  median APE "
                       f"{sc['median_ape'] * 100:5.1f}%  90% coverage {sc['coverage90'] * 100:5.1f}%")
    aic = res["peers"]["aiconfigurator"]
    if not aic.get("available") or not aic.get("metrics"):
        click.echo(f"peers: AIConfigurator: {aic.get('note', 'no comparable rows')}")
    else:
        click.echo(f"peers, same rows ({aic['rows']} sampled; {aic['aiconfigurator']}; ours held out):")
        for m, sc in aic["metrics"].items():
            if sc["n"]:
                click.echo(f"  {m:13s} n={sc['n']:4d}  AIConfigurator median APE {sc['aic_median_ape'] * 100:5.1f}%  "
                           f"this advisor {sc['ours_median_ape'] * 100:5.1f}%  (AIC failed on {sc['failed']})")


def _peer_note() -> str:
    try:
        import aiconfigurator  # noqa: F401
    except ImportError:
        return ("AIConfigurator not installed (pip install aiconfigurator in its own environment); its side-by-side "
                "error is not computed here")
    return "AIConfigurator is installed, but the side-by-side comparison is not implemented yet"


def _dataset(extra, physical: bool = False):
    """The shipped measured dataset plus the user's CSV files (read with pandas; never pickles); with
    ``physical`` the user's rows must be physical (:func:`check_physical`)."""
    import pandas as pd

    try:
        from measurement.dataset import load_dataset
        frames = [load_dataset()]
    except ImportError:
        frames = []
    for p in extra:
        df = read_user_csv(p)
        if physical:
            check_physical(df, p)
        frames.append(df)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


MAX_DATA_BYTES = 200 * 1024 * 1024


def read_user_csv(path: str):
    """A user's --data file: a regular file under MAX_DATA_BYTES that pandas parses as CSV with a header;
    anything else exits 2 naming the file and what went wrong (never a traceback, never a pickle)."""
    import os
    import stat

    import pandas as pd

    from .options import _err
    try:
        st_ = os.stat(path)
    except OSError as e:
        _err(f"--data {path}: {e.strerror}")
    if not stat.S_ISREG(st_.st_mode):
        _err(f"--data {path}: not a regular file")
    if st_.st_size > MAX_DATA_BYTES:
        _err(f"--data {path}: {st_.st_size / 1e6:.0f} MB is over the {MAX_DATA_BYTES / 1e6:.0f} MB limit")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        _err(f"--data {path}: not a CSV file with a header row ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
    need = {"gpu", "model", "precision", "batch"}
    if not need <= set(df.columns):
        _err(f"--data {path}: missing columns {', '.join(sorted(need - set(df.columns)))} (the dataset's columns: "
             "see measurement/data/measurements.meta.json)")
    return df


POSITIVE_COLUMNS = ("decode_ms_per_token", "decode_tok_s", "prefill_ms", "peak_mem_gb", "j_per_token", "batch",
                    "prompt_len", "gen_len")


def check_physical(df, path: str) -> None:
    """Refuse the first non-physical ok row: non-finite or non-positive figures, or a decode step faster than
    its roofline by more than 5% (exit 2 with the file, row and column)."""
    import math

    from .options import _err
    rows = df.to_dict("records")
    for i, r in enumerate(rows):
        if str(r.get("status", "ok")) != "ok":
            continue
        line = i + 2  # 1-based, after the header
        for c in POSITIVE_COLUMNS:
            if c not in r or r[c] is None or (isinstance(r[c], float) and math.isnan(r[c]) and c != "batch"):
                continue
            try:
                v = float(r[c])
            except (TypeError, ValueError):
                _err(f"--data {path}: row {line}, column {c}: '{r[c]}' is not a number")
            if not math.isfinite(v) or v <= 0:
                _err(f"--data {path}: row {line}, column {c}: {v} is not a finite positive number")
        roof, step = r.get("roofline_decode_ms"), r.get("decode_ms_per_token")
        try:
            if roof and step and float(step) < 0.95 * float(roof):
                _err(f"--data {path}: row {line}: decode {float(step):.4g} ms/token beats its roofline "
                     f"{float(roof):.4g} ms by more than 5% (a measurement bug)")
        except (TypeError, ValueError):
            _err(f"--data {path}: row {line}: roofline_decode_ms or decode_ms_per_token is not a number")


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


def _engine_pins_json(f):
    """--engine, the method pins (--precision, --sparsity, --kv) and --json, as plan and compare declare them."""
    for opt in reversed((
            click.option("--engine", default="vllm", show_default=True,
                         help="vllm, sglang, tensorrt-llm, llama.cpp, transformers, or auto."),
            click.option("--precision", "pin_precision", default=None, help="Only this precision (a method id)."),
            click.option("--sparsity", "pin_sparsity", default=None,
                         help="Only this sparsity (dense, 2:4-wanda, drop-8, ...)."),
            click.option("--kv", "pin_kv", default=None, help="Only this KV policy (kv-fp16, kv-fp8, snapkv, ...)."),
            click.option("--json", "as_json", is_flag=True))):
        f = opt(f)
    return f


def register_planning(main: click.Group) -> None:
    from .options import EXIT_INFEASIBLE, _emit_json, _err, parse_fraction

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
    @_engine_pins_json
    def plan(model, qps, prompt_len, gen_len, ttft_p95, tpot_p95, gpus, max_ppl_delta, grid_gco2_per_kwh, engine,
             pin_precision, pin_sparsity, pin_kv, as_json):
        """Capacity: GPUs, replicas and method per GPU type for a load and latency targets."""
        from profiles import UnknownProfileError

        from .engine import RequestError
        from .plan import HOURS_PER_MONTH, PlanRequest, plan as run, plan_dict
        from .service import speed_model_or_none
        sm, note = speed_model_or_none()
        click.echo(f"note: {note}", err=True)
        req = PlanRequest(model, qps, prompt_len, gen_len, parse_duration(ttft_p95, "--ttft-p95"),
                          parse_duration(tpot_p95, "--tpot-p95"), _gpu_list(gpus), parse_fraction(max_ppl_delta),
                          grid_gco2_per_kwh, engine=engine, pin_precision=pin_precision, pin_sparsity=pin_sparsity,
                          pin_kv=pin_kv)
        try:
            plans = run(req, speed_model=sm)
        except (UnknownProfileError, RequestError) as e:
            _err(str(e))
        if as_json:
            _emit_json({"request": req.__dict__, "plans": plan_dict(plans)})
        else:
            from rich.table import Table

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
            click.echo(f"latency model: continuous batching, decode step at full concurrency ({sm and 'fitted' or 'analytical'} "
                       "cost model), whole-prompt "
                       "prefill between steps, M/M/c wait for a slot (conservative vs a discrete-event simulation); "
                       "$ from each profile's dated cloud price", err=True)
        if not any(p.best for p in plans):
            sys.exit(EXIT_INFEASIBLE)

    @main.command()
    @_model_gpus_quality_context("all", "Comma-separated GPU ids, or all.")
    @click.option("--gen-len", type=click.IntRange(1, 1 << 20), default=256, show_default=True)
    @click.option("--batch", type=click.IntRange(1, 4096), default=32, show_default=True,
                  help="Serving concurrency (halved per GPU until something fits).")
    @click.option("--usd-per-kwh", type=Finite(0, 100), default=None,
                  help="Your electricity price, subtracted from rent savings in the payback.")
    @_engine_pins_json
    def compare(model, gpus, max_ppl_delta, context, gen_len, batch, usd_per_kwh, engine, pin_precision, pin_sparsity,
                pin_kv, as_json):
        """Procurement: GPUs ranked by $ per million tokens at a quality bound, with payback."""
        from dataclasses import asdict

        from profiles import UnknownProfileError

        from .engine import RequestError
        from .plan import compare as run
        from .service import speed_model_or_none
        sm, note = speed_model_or_none()
        try:
            rows = run(model, _gpu_list(gpus) or ("all",), parse_fraction(max_ppl_delta), context, gen_len, batch,
                       usd_per_kwh, sm, engine=engine, pins={k: v for k, v in (("precision", pin_precision),
                                                                               ("sparsity", pin_sparsity),
                                                                               ("kv", pin_kv)) if v})
        except (UnknownProfileError, RequestError) as e:
            _err(str(e))
        click.echo(f"note: {note}", err=True)
        if as_json:
            _emit_json([asdict(r) for r in rows])
            return
        from .render import console
        from rich.table import Table
        t = Table(title=f"{model}: cheapest method per GPU at quality loss <= {max_ppl_delta}, context {context}",
                  header_style="bold")
        for col in ("gpu", "GPUs", "engine", "method", "batch", "tok/s", "$/Mtok [90%]", "J/tok", "tok/J", "loss %",
                    "list $", "payback mo", "rows"):
            t.add_column(col)
        for r in rows:
            if r.candidate is None:
                t.add_row(r.gpu, "", "", f"[red]infeasible[/] {(r.reason or '')[:90]}", *[""] * 9)
                continue
            iv = r.usd_per_mtok_interval
            t.add_row(r.gpu, str(r.num_gpus), r.engine or "", r.candidate.replace(" + dense", "").replace(" + kv-fp16", ""),
                      str(r.batch), f"{r.decode_tok_s:,.0f}",
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
    @click.option("--engine", default="vllm", show_default=True, help="vllm, sglang, tensorrt-llm, llama.cpp, transformers.")
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
        Path(out).write_text(page, encoding="utf-8")
        if as_json:
            _emit_json({"report": str(Path(out).resolve()), "bytes": len(page)})
        else:
            click.echo(f"wrote {out} ({len(page) // 1024} KiB, opens offline)")
