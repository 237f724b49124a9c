"""The measure and fit commands (recommend and predict live in cli.py; plan, compare and report in
planning_cmd.py; validate in validate_cmd.py)."""
from __future__ import annotations

import click

from .data_files import _dataset
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
