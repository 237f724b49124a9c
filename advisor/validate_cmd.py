"""`advisor validate`: held-out errors of every cost model (harness, engines, quality, energy, multi-GPU)."""
from __future__ import annotations

import click

from .data_files import _dataset


HELD_OUT_NOTE = (
    "(analytical, held out: every constant read off these rows (eager host, KV read, KV dequant, the kernels' "
    "compiled bandwidth fractions and per-layer ms (FUSED), prefill compute fractions (PREFILL), the compiled step "
    "overhead, the 2:4, int4 and int8-wo batch costs) refitted by models/harness_fit.py on each fold's training "
    "rows (where they lack the evidence: the kernel probes of measurement/data/kernel_probe transferred through the "
    "methods the fold did fit, else a stated prior), the correction fitted on those predictions; in-sample: the "
    "shipped constants, fitted on all these rows. Not derived from these rows, so left as they are: the kernel "
    "probes, the PROBE (H200 projection probe) and TORCHAO (torchao's published table) figures in "
    "models/data/harness_kernels.json and models/efficiency.py)")


def register_validate(main: click.Group) -> None:
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
        try:  # before minutes of work, not after
            Path(plots).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from .options import _err
            _err(f"--plots {plots}: cannot create the folder ({e.strerror})")
        df = _dataset(extra)
        res = held_out(df) if len(df) else {}
        report = {"held_out": {}, "published": {}}
        for split, r in res.items():
            if "skipped" in r:
                report["held_out"][split] = r
                continue
            fitted = {t: {k: v for k, v in sc.items() if k != "analytical_held_out_mape"} for t, sc in r["scores"].items()}
            report["held_out"][split] = {
                "fitted": fitted,
                "analytical_held_out_mape": {t: sc["analytical_held_out_mape"] for t, sc in r["scores"].items()
                                             if "analytical_held_out_mape" in sc},
                "analytical_in_sample_mape": r["analytical"], "constants_from_prior": r.get("priors", {}),
                "folds": r.get("folds")}
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
                ho = r["analytical_held_out_mape"].get(t, float("nan")) * 100
                ins = r["analytical_in_sample_mape"].get(t, float("nan")) * 100
                click.echo(f"  {t:12s} MAPE {s['mape'] * 100:6.1f}% (analytical: held out {ho:6.1f}%, in-sample "
                           f"{ins:6.1f}%)  median APE {s['median_ape'] * 100:5.1f}%  coverage90 "
                           f"{s['coverage90'] * 100:5.1f}%  n={s['n']}")
                if s.get("by_backend"):
                    click.echo("  " + " " * 12 + " by backend: " + ", ".join(
                        f"{b} MAPE {v['mape'] * 100:.1f}% coverage90 {v['coverage90'] * 100:.1f}% (n={v['n']})"
                        for b, v in s["by_backend"].items()))
                if "tok_s_mape" in s:
                    click.echo(f"  {'decode tok/s':12s} MAPE {s['tok_s_mape'] * 100:6.1f}%  median APE "
                               f"{s['tok_s_median_ape'] * 100:5.1f}%")
            if r["constants_from_prior"]:
                click.echo(f"  on their prior in a fold (of {r['folds']}) whose training rows lack the evidence: "
                           f"{_priors_text(r['constants_from_prior'])}")
        click.echo("published third-party decode tok/s (analytical cost model):")
        for e, d in sorted(report["published"].items()):
            click.echo(f"  {e:18s} n={d['n']:3d}  MAPE {d['mape'] * 100:6.1f}%  median {d['median_ape'] * 100:6.1f}%")
        click.echo(HELD_OUT_NOTE)
        click.echo(f"plots: {plots}/")


def _priors_text(priors: dict) -> str:
    """{"name[key]": folds} -> "name[key, key x2], other": one entry per constant, its keys together."""
    fam: dict = {}
    for k, n in sorted(priors.items()):
        name, _, key = k.partition("[")
        fam.setdefault(name, []).append(key.rstrip("]") + (f" x{n}" if n > 1 else "") if key else
                                        (f"x{n}" if n > 1 else ""))
    return ", ".join(f"{name}[{', '.join(v)}]" if any(v) else name for name, v in fam.items())


def _validate_energy(by: str, as_json: bool) -> None:
    """advisor validate --energy: power held out by source (or GPU); published J/token per GPU."""
    import json as _json

    from profiles import load

    from models.energy_fit import published_rows, validate as energy_validate
    cat = load()
    res = energy_validate(cat, by)
    res["end_to_end_j_per_token"] = _end_to_end(published_rows(cat))
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


def _end_to_end(pub: list[dict]) -> dict:
    """The published rows answered as a user would get them: advisor.predict (the row's engine, else the default
    one; bf16, the row's batch, GPUs, mean output length and estimated prompt length) -> J/token, speed included."""
    import advisor
    from models.candidate import DEFAULT_PRECISION  # unquantized bf16, as the benchmark served the models
    from models.energy_fit import _scores
    by = {}
    for r in pub:
        try:
            p = advisor.predict(model=r["model"], gpu=r["gpu"], engine=r.get("engine"), precision=DEFAULT_PRECISION,
                                batch=int(r["batch"]), prompt_len=round(r["prompt"]), gen_len=round(r["gen"]),
                                num_gpus=r["n"])
        except ValueError:
            continue
        if not p["supported"]:
            continue
        j = p["j_per_token"]
        by.setdefault(r["gpu"], []).append((r["j_per_token"], j["value"], j["low"], j["high"]))
    return {g: _scores([a for a, *_ in v], [b for _, b, _, _ in v], [lo for *_, lo, _ in v], [hi for *_, hi in v])
            for g, v in sorted(by.items())}


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
        if kind in ("held_out_by", "as_served"):
            continue
        meta = fams.get("_predicted_of", {})
        click.echo(f"{kind}: {meta.get('predicted', 0)} of {meta.get('rows', 0)} rows predicted")
        for f, sc in fams.items():
            if f.startswith("_"):
                continue
            click.echo(f"  {f:24s} n={sc['n']:3d}  MAE {sc['mae_points']:6.2f} points "
                       f"(beyond rounding {sc['mae_beyond_rounding_points']:5.2f})  90% coverage "
                       f"{sc['coverage90'] * 100:5.1f}% (rounding-aware {sc['coverage90_rounding'] * 100:5.1f}%)  "
                       f"({', '.join(sc['rules'])})")
    _echo_by_kind("catalog methods only (the ones recommend can answer; published tables also hold others):",
                  {k: f.get("_catalog_methods") or {} for k, f in res.items() if k not in ("held_out_by", "as_served")})
    _echo_by_kind("as served (rows of catalog models and methods, through the whole rule recommend uses: pooling by size, "
                  "chains, budgets)", res["as_served"])


def _echo_by_kind(title: str, by_kind: dict) -> None:
    """One line per quantity and method family: n, MAE in points (and beyond the published rounding), 90%
    coverage."""
    click.echo(title)
    for kind, fams in by_kind.items():
        for f, sc in fams.items():
            if f.startswith("_"):
                continue
            click.echo(f"  {kind:14s} {f:24s} n={sc['n']:3d}  MAE {sc['mae_points']:6.2f} points "
                       f"(beyond rounding {sc['mae_beyond_rounding_points']:5.2f})  90% coverage "
                       f"{sc['coverage90'] * 100:5.1f}% (rounding-aware {sc['coverage90_rounding'] * 100:5.1f}%)")


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
    from models.engine_fit import design, engines_fitted, sibling_of
    from models.engine_validate import validate_engine
    try:
        eid = load().resolve("engine", engine).id
    except UnknownProfileError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2)
    if eid not in engines_fitted():
        click.echo(f"error: --engine {eid}: the engine cost models are {', '.join(engines_fitted())} "
                   "(the harness model is validated without --engine)", err=True)
        raise SystemExit(2)
    click.echo(f"validating {eid}: one fit per held-out source, nested interval folds (minutes for large sets)",
               err=True)
    import numpy as np

    from models.peer_aic import side_by_side
    rows = load_engine_rows()
    cat = load()
    d = design(rows, eid, cat)
    sib = sibling_of(cat, eid)
    res = validate_engine(d, by=by, sibling=design(rows, sib, cat) if sib else None)
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
