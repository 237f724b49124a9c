"""The ``advisor`` command line: a thin click layer over :mod:`advisor.engine`.

Data goes to stdout (``--json`` for machines); progress, notes and warnings go to stderr.
"""
from __future__ import annotations

import sys

import click

from profiles import SchemaError, UnknownProfileError
from profiles.dtypes import BF16, FP8

from models.candidate import DEFAULT_KV, DEFAULT_PRECISION, DEFAULT_SPARSITY

from .options import (EXIT_BAD_INPUT, EXIT_INFEASIBLE, Finite, _emit_json, _err,  # noqa: F401 - re-exported
                      backend_ignored, default_engine, engine_list, parse_fraction, parse_points)

HARNESS_NOTE = " (this project's harness)"

class _OneLineErrors(click.Group):
    """click's own input errors (a bad option value, a missing or unknown option) as every other bad input is
    answered: one line on stderr, exit 2, and under --json a JSON error object on stdout (no usage block)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()) as e:  # a bare `advisor` (click >= 8.2): its help
            click.echo(e.format_message(), err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            msg = e.format_message().replace("\n", " ")
            click.echo(f"error: {msg}", err=True)
            if "--json" in argv:
                _emit_json({"error": msg, "exit_code": e.exit_code})
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llm-deploy-advisor")
def main():
    """How to run LLM X on GPU Y: precision, sparsity and KV policy, with predicted speed, memory,
    energy, cost and quality, each with its interval and source."""


@main.command()
@click.option("--gpu", required=True, help="GPU id or alias (advisor profiles list gpus).")
@click.option("--model", required=True, help="Model id, alias or Hugging Face id.")
@click.option("--max-ppl-delta", "max_ppl_delta", default="2%", show_default=True,
              help="Largest relative perplexity increase (WikiText-2, else C4): 2%, 0.02 or 2 (a bare number >= 1 "
                   "is percent). 'none' removes the bound. A candidate with no perplexity figure is unknown, not "
                   "passing.")
@click.option("--max-accuracy-drop", "max_accuracy_drop", default=None,
              help="Largest task-accuracy drop in points (MMLU, Open LLM average, zero-shot average), e.g. 1.")
@click.option("--max-longctx-drop", "max_longctx_drop", default=None,
              help="Largest long-context score drop in points (LongBench, needle), e.g. 1.")
@click.option("--allow-unknown-quality", is_flag=True,
              help="Admit candidates whose bounded quality figure is unknown (with a note).")
@click.option("--precision", "pin_precision", default=None, help="Only this precision (e.g. fp8, awq-int4, gguf-q4_k_m).")
@click.option("--sparsity", "pin_sparsity", default=None, help="Only this sparsity (dense, 2:4-wanda, drop-8, ...).")
@click.option("--kv", "pin_kv", default=None, help="Only this KV policy (kv-fp16, kv-fp8, snapkv, ...).")
@click.option("--context", type=click.IntRange(2, 1 << 20), default=4096, show_default=True,
              help="Tokens per sequence, prompt and generated together.")
@click.option("--gen-len", type=click.IntRange(1, 1 << 20), default=256, show_default=True, help="Generated tokens per sequence.")
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True, help="Concurrent sequences.")
@click.option("--objective", type=click.Choice(["throughput", "latency", "energy", "cost"]), default="throughput",
              show_default=True)
@click.option("--min-tokens-per-s", type=Finite(0, 1e6, lo_open=True), default=None,
              help="Minimum decode speed each sequence sees (tok/s).")
@click.option("--num-gpus", type=click.IntRange(1, 64), default=1, show_default=True, help="Tensor-parallel GPUs.")
@click.option("--top", type=click.IntRange(1, 1000), default=5, show_default=True, help="How many ranked candidates to show.")
@click.option("--backend", type=click.Choice(["compiled", "eager"]), default="compiled", show_default=True,
              help="compiled: static cache + CUDA graphs (a tuned deployment); eager: plain transformers.")
@click.option("--engine", default=default_engine(), show_default=True,
              help=f"Serving engine: {engine_list(HARNESS_NOTE)}, or auto (search the engines too).")
@click.option("--show-rejected", is_flag=True, help="List every rejected candidate with its reason (--json).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def recommend(gpu, model, max_ppl_delta, max_accuracy_drop, max_longctx_drop, allow_unknown_quality, pin_precision,
              pin_sparsity, pin_kv, context, gen_len, batch, objective, min_tokens_per_s, num_gpus, top, backend, engine,
              show_rejected, as_json):
    """Pick precision, sparsity and KV policy for MODEL on GPU under memory, quality and speed bounds."""
    backend_ignored(engine)
    from .engine import Request, RequestError, recommend as run
    from .service import deploy_commands, harness_note, speed_model_or_none
    from .serialize import recommendation_dict

    req = Request(gpu=gpu, model=model, max_quality_loss=parse_fraction(max_ppl_delta), context=context,
                  batch=batch, gen_len=gen_len, objective=objective, min_tok_s=min_tokens_per_s,
                  num_gpus=num_gpus, top=top, backend=backend, engine=engine,
                  max_accuracy_drop=parse_points(max_accuracy_drop, "--max-accuracy-drop"),
                  max_longctx_drop=parse_points(max_longctx_drop, "--max-longctx-drop"),
                  allow_unknown_quality=allow_unknown_quality, pin_precision=pin_precision,
                  pin_sparsity=pin_sparsity, pin_kv=pin_kv)
    try:
        sm, sm_note = speed_model_or_none()
        rec = run(req, speed_model=sm)
    except (UnknownProfileError, RequestError, SchemaError) as e:
        _err(str(e))
    harness = harness_note(sm_note, {e.prediction.engine for e in rec.evaluated})
    for n in rec.notes + ([harness] if harness else []):
        click.echo(f"note: {n}", err=True)
    deploy = deploy_commands(rec)
    if as_json:
        _emit_json(recommendation_dict(rec, deploy, show_rejected))
    else:
        from .render import console

        from .render import render_recommendation
        render_recommendation(rec, deploy, console())
    if rec.best is None:
        sys.exit(EXIT_INFEASIBLE)


@main.command("predict")
@click.option("--gpu", required=True, help="GPU id or alias.")
@click.option("--model", required=True, help="Model id, alias or Hugging Face id.")
@click.option("--engine", default=default_engine(), show_default=True, help=f"{engine_list()}.")
@click.option("--precision", default=DEFAULT_PRECISION, show_default=True,
              help="Weight method id (advisor profiles list methods).")
@click.option("--sparsity", default=DEFAULT_SPARSITY, show_default=True)
@click.option("--kv", default=DEFAULT_KV, show_default=True, help="KV-cache method id.")
@click.option("--kv-budget", type=click.IntRange(1, 1 << 20), default=None, help="Tokens kept per sequence (eviction policies).")
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True, help="Concurrent sequences.")
@click.option("--prompt-len", type=click.IntRange(1, 1 << 20), default=512, show_default=True, help="Prompt tokens.")
@click.option("--gen-len", type=click.IntRange(1, 1 << 20), default=128, show_default=True, help="Generated tokens.")
@click.option("--num-gpus", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--split", type=click.Choice(["layer", "row"]), default=None, help="llama.cpp multi-GPU split mode.")
@click.option("--backend", type=click.Choice(["compiled", "eager"]), default="compiled", show_default=True,
              help="transformers engine only.")
@click.option("--json", "as_json", is_flag=True, help="The advisor.predict dict as JSON on stdout.")
def predict_cmd(gpu, model, engine, precision, sparsity, kv, kv_budget, batch, prompt_len, gen_len, num_gpus, split,
                backend, as_json):
    """Predict one pinned configuration (the same dict as advisor.predict)."""
    backend_ignored(engine)
    from .api import predict

    try:
        r = predict(model=model, gpu=gpu, engine=engine, precision=precision, sparsity=sparsity, kv=kv, batch=batch,
                    prompt_len=prompt_len, gen_len=gen_len, num_gpus=num_gpus, kv_budget=kv_budget, backend=backend,
                    split=split)
    except ValueError as e:
        _err(str(e))
    if as_json:
        _emit_json(r)
    else:
        click.echo(f"{r['model']} on {r['gpu']} x{r['num_gpus']} | {r['engine']} | {r['candidate']}")
        if not r["supported"]:
            click.echo(f"not supported: {r['reason']}")
        else:
            for k in ("decode_tok_s", "output_tok_s", "tpot_ms", "ttft_ms", "prefill_tok_s", "peak_mem_gb",
                      "power_w", "j_per_token"):
                e = r[k]
                click.echo(f"  {k:14s} {e['value']:10.4g} {e['unit']:8s} [{e['low']:.4g} - {e['high']:.4g}] {e['source']}")
            for m, e in r["quality"].items():
                if e["value"] is None:
                    click.echo(f"  quality {m:13s} unknown (no row supports it)")
                    continue
                u = "%" if e["unit"] == "%" else " pt"
                click.echo(f"  quality {m:13s} {e['value']:.2f}{u} [{e['low']:.2f} - {e['high']:.2f}] {e['kind']}: "
                           f"{e['source'][:100]}")
            if not r["fits"]:
                click.echo(r["reason"])
        for n in r["notes"]:
            click.echo(f"note: {n}", err=True)
    if not r["supported"] or not r["fits"]:
        sys.exit(EXIT_INFEASIBLE)


@main.group()
def profiles():
    """Browse the GPU, model and method catalogs."""


@profiles.command("list")
@click.argument("kind", type=click.Choice(["gpus", "models", "methods", "engines"]), default="gpus")
@click.option("--json", "as_json", is_flag=True)
def profiles_list(kind, as_json):
    """List GPUS, MODELS or METHODS."""
    from profiles import load

    cat = load()
    if kind == "gpus":
        rows = [{"id": g.id, "name": g.name, "memory_gb": g.memory_gb, "mem_bw_gbps": g.mem_bw_gbps,
                 "bf16_tflops": g.peak_tflops(BF16), "fp8_tflops": g.peak_tflops(FP8), "tdp_w": g.tdp_w,
                 "cc": g.compute_capability, "usd_per_hour": g.cloud_usd_per_hour} for g in cat.gpus.values()]
    elif kind == "models":
        rows = [{"id": m.id, "hf_id": m.hf_id, "family": m.family, "params_b": m.published_params_b,
                 "layers": m.num_hidden_layers, "kv_heads": m.num_key_value_heads,
                 "max_context": m.max_position_embeddings} for m in cat.llms.values()]
    elif kind == "engines":
        rows = [{"id": e.id, "name": e.name, "version": e.version, "batching": e.get("batching"),
                 "parallelism": ",".join(e.get("parallelism")),
                 "methods": "all (min_cc)" if e.runs_everything else ",".join(e.method_ids())}
                for e in cat.engines.values()]
    else:
        rows = [{"id": m.id, "kind": m.kind, "name": m.name, "min_cc": m.min_cc,
                 "bytes_per_weight": m.get("bytes_per_weight"), "bytes_per_kv_elem": m.get("bytes_per_kv_elem")}
                for m in cat.methods.values()]
    if as_json:
        _emit_json(rows)
        return
    from .render import console
    from .tables import Table

    t = Table(show_header=True, header_style="bold")
    for k in rows[0]:
        t.add_column(k)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r.values()))
    console().print(t)


@profiles.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def profiles_show(name, as_json):
    """Show one GPU, model or method with every field and its source."""
    from profiles import load

    cat = load()
    for kind, table in (("gpu", cat.gpus), ("model", cat.llms), ("method", cat.methods), ("engine", cat.engines)):
        try:
            r = cat.resolve(kind, name)
        except UnknownProfileError:
            continue
        if r.note:
            click.echo(f"note: {r.note}", err=True)
        entry = table[r.id].raw
        if as_json:
            _emit_json({"kind": kind, **entry})
        else:
            import yaml
            click.echo(f"# {kind}: {r.id}")
            click.echo(yaml.safe_dump(entry, sort_keys=False, allow_unicode=True, width=110))
        return
    sugg = []
    for kind in ("gpu", "model", "method"):
        try:
            cat.resolve(kind, name)
        except UnknownProfileError as e:
            sugg += e.suggestions
    _err(f"no GPU, model or method named '{name}'." + (f" Did you mean: {', '.join(sugg[:5])}?" if sugg else ""))


def _register_optional() -> None:
    """Commands whose modules are heavy or optional are added lazily (torch never loads here)."""
    from .commands import register
    from .planning_cmd import register_planning, register_report
    from .validate_cmd import register_validate
    register(main)
    register_validate(main)
    register_planning(main)
    register_report(main)


_register_optional()

if __name__ == "__main__":  # pragma: no cover
    main()
