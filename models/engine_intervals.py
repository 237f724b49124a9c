"""Intervals of the engine cost model: split-conformal quantiles of held-out |log residuals| per metric group
(decode, prefill, throughput) and per kind of evidence (measured here / published), and the widening
when a query uses a kernel, or a kernel on an architecture, that no row of the engine covers.
Used by the fit (:mod:`models.engine_fit`), its validation and the facade alike."""
from __future__ import annotations

import numpy as np

from . import conformal

WIDEN = {"kernel": 2.0, "kernel_arch": 1.5}
MIN_KIND_ROWS = 20


def conformal_q(res: np.ndarray, groups: np.ndarray, kinds: np.ndarray | None = None) -> dict:
    """Per metric group, the finite-sample 90% quantile of |log residual| (pooled when a group has < 5).
    With ``kinds``, also per kind of evidence under ``"measured"`` and ``"published"`` (where that kind has
    >= 20 residuals): this project's own runs on one GPU fit far closer than third-party pages from many
    builds, and one pooled quantile would be too wide for the first and too narrow for the second."""
    ok = np.isfinite(res)
    pooled = _q(np.abs(res[ok])) if ok.sum() >= 5 else 0.7
    out = {"all": pooled}
    for g in ("decode", "prefill", "throughput"):
        r = np.abs(res[ok & (groups == g)])
        out[g] = _q(r) if len(r) >= 5 else pooled * 1.5
    if kinds is not None:
        for k in ("measured", "published"):
            m = kinds == k
            if (ok & m).sum() >= MIN_KIND_ROWS and (ok & ~m).any():
                out[k] = conformal_q(res[m], groups[m])
    return out


def evidence_kind(gpu: str, measured: list[str] | set[str]) -> str:
    """'measured' for a GPU with measured rows, else 'published': which quantile of :func:`q_for` applies."""
    return "measured" if gpu in measured else "published"


def q_for(q: dict, group: str, kind: str) -> float:
    """The interval quantile for a row or query of ``kind`` (measured here, or published) and metric group."""
    qq = q.get(kind, q)
    return qq.get(group, qq["all"])


def _q(r: np.ndarray) -> float:
    return conformal.quantile(r)


def widen_factor(domain: dict, kernel: str, arch: str) -> tuple[float, list[str]]:
    if kernel not in domain:
        return WIDEN["kernel"], [f"no {kernel} rows: default kernel efficiencies"]
    if arch not in domain[kernel]:
        return WIDEN["kernel_arch"], [f"{kernel} never benchmarked on {arch}"]
    return 1.0, []
