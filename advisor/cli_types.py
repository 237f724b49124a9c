"""Click parameter types shared by the commands (no imports from the command modules)."""
from __future__ import annotations

import click


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
