"""Registration of the commands that live outside the core module (measure, fit, plan, ...)."""
from __future__ import annotations

import click


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
                  help="Where to write the fitted model (JSON). Default: ~/.cache/advisor/fitted.json "
                       "(then used by recommend, plan and compare).")
    @click.option("--alpha", type=click.FloatRange(min=0), default=1.0, show_default=True, help="Ridge strength.")
    @click.option("--json", "as_json", is_flag=True)
    def fit(extra, out, alpha, as_json):
        """Refit the cost model from the shipped dataset plus your rows (seconds; JSON, no pickles)."""
        import json as _json

        from models.fit_store import user_model_path
        from models.fitted import fit_model, save
        df = _dataset(extra)
        try:
            fitted = fit_model(df, alpha=alpha)
        except ValueError as e:
            click.echo(f"error: {e}", err=True)
            raise SystemExit(2)
        path, side = save(fitted, out or user_model_path())
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
    @click.option("--json", "as_json", is_flag=True)
    def validate(extra, plots, as_json):
        """Leave-one-GPU/model/method-out errors and interval coverage; error on published figures."""
        import json as _json
        from pathlib import Path

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
                click.echo(f"  {t:12s} MAPE {s['mape'] * 100:6.1f}% (analytical {r['analytical_mape'].get(t, float('nan')) * 100:6.1f}%)"
                           f"  coverage90 {s['coverage90'] * 100:5.1f}%  n={s['n']}")
        click.echo("published third-party decode tok/s (analytical cost model):")
        for e, d in sorted(report["published"].items()):
            click.echo(f"  {e:18s} n={d['n']:3d}  MAPE {d['mape'] * 100:6.1f}%  median {d['median_ape'] * 100:6.1f}%")
        click.echo(f"plots: {plots}/")


def _dataset(extra):
    """The shipped measured dataset plus the user's CSV files (read with pandas; never pickles)."""
    import pandas as pd

    try:
        from measurement.dataset import load_dataset
        frames = [load_dataset()]
    except ImportError:
        frames = []
    frames += [pd.read_csv(p) for p in extra]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
