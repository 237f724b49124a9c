"""What every command shares: exit codes, the error path, JSON output, and the parsers and click types of
numbers with units (bounds as fractions or points, finite ranges). The command modules import from here, so
no command module imports another."""
from __future__ import annotations

import json
import sys

import click

EXIT_BAD_INPUT = 2
EXIT_INFEASIBLE = 3


def engine_list(harness_note: str = "") -> str:
    """The catalog's engine ids, comma-separated (``harness_note`` after the harness engine's), for --engine's help."""
    from profiles import load
    return ", ".join(e.id + (harness_note if e.runs_everything else "") for e in load().engines.values())


def default_engine() -> str:
    """--engine's default: the catalog's default engine."""
    from profiles import load
    return load().default_engine


def backend_ignored(engine: str) -> None:
    """A --backend typed on the command line for a serving engine, which has no such choice: say on stderr that it
    is ignored (--engine auto searches the harness engine too, where it applies)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.get_parameter_source("backend") != click.core.ParameterSource.COMMANDLINE:
        return
    from profiles import UnknownProfileError, load
    cat = load()
    try:
        eid = cat.resolve("engine", engine).id
    except (UnknownProfileError, KeyError, ValueError):
        return  # auto, or an unknown id the command itself reports
    if eid != cat.harness_engine:
        click.echo(f"note: --backend applies to the {cat.harness_engine} engine only; {eid} ignores it", err=True)


def _err(msg: str, code: int = EXIT_BAD_INPUT):
    """One line on stderr and the exit code; under --json also a JSON error object on stdout."""
    click.echo(f"error: {msg}", err=True)
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.params.get("as_json"):
        click.echo(json.dumps({"error": msg, "exit_code": code}))
    sys.exit(code)


def parse_fraction(text: str | None, name: str = "--max-ppl-delta") -> float | None:
    """A relative bound as a fraction: '2%' -> 0.02, '0.02' -> 0.02, '2' -> 0.02 (a bare number >= 1 is read as
    percent, and said so on stderr). Negative or over 100% is refused."""
    if text is None or str(text).strip().lower() in ("none", "off"):
        return None
    s = str(text).strip()
    try:
        v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a number: use e.g. 2% or 0.02", param_hint=name) from None
    if v != v or v < 0:
        raise click.BadParameter(f"'{text}': accepted 0% to 100% (e.g. 2% or 0.02)", param_hint=name)
    if not s.endswith("%") and v >= 1:
        click.echo(f"note: {name} {s} read as {v:g}%", err=True)
        v = v / 100
    if v > 1:
        raise click.BadParameter(f"'{text}': accepted 0% to 100% (e.g. 2% or 0.02)", param_hint=name)
    return v


def parse_points(text: str | None, name: str) -> float | None:
    """A drop in points of a 0-100 score: '1', '1.5', '1pt'. None / 'none' -> no bound."""
    if text is None or str(text).strip().lower() in ("none", "off"):
        return None
    s = str(text).strip().lower().removesuffix("points").removesuffix("pts").removesuffix("pt").strip()
    try:
        v = float(s)
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a number of points (e.g. 1 or 1.5)", param_hint=name) from None
    if v != v or not 0 <= v <= 100:
        raise click.BadParameter(f"'{text}': accepted 0 to 100 points", param_hint=name)
    return v


def _emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))



class Finite(click.ParamType):
    """A finite float within [lo, hi] (click's FloatRange lets NaN through): the error names the range."""

    name = "number"

    def __init__(self, lo: float, hi: float, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def convert(self, value, param, ctx):
        import math
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a number", param, ctx)
        below = v <= self.lo if self.lo_open else v < self.lo
        if not math.isfinite(v) or below or v > self.hi:
            self.fail(f"{value} is outside the accepted range {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]",
                      param, ctx)
        return v
