"""The split-conformal quantile: the one interval step of every cost model (engine, harness correction, power,
quality).

Given n held-out residuals exchangeable with a new query's, the ceil((n + 1) x coverage)-th smallest of them bounds
the new residual with probability at least ``coverage`` (Lei, G'Sell, Rinaldo, Tibshirani and Wasserman,
"Distribution-free predictive inference for regression", JASA 2018, section 2.2; Angelopoulos and Bates, "A gentle
introduction to conformal prediction and distribution-free uncertainty quantification", 2021, section 1). The plain
empirical quantile (numpy's default, interpolated) sits below that rank, so with tens of residuals it covers less
than it says. With fewer than coverage / (1 - coverage) residuals the rank exceeds n: the largest is returned, and
no finite-sample guarantee holds.
"""
from __future__ import annotations

import math

COVERAGE = 0.90


def quantile(residuals, coverage: float = COVERAGE) -> float | None:
    """The ceil((n + 1) x coverage)-th smallest of the finite ``residuals`` (the largest where that rank exceeds n);
    None when there are none."""
    r = sorted(float(x) for x in residuals if math.isfinite(float(x)))
    if not r:
        return None
    k = math.ceil((len(r) + 1) * coverage)
    return r[min(k, len(r)) - 1]
