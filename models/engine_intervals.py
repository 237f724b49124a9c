"""Intervals of the engine cost model: split-conformal quantiles of held-out |log residuals| per metric group
(decode, prefill, throughput) and per kind of evidence (measured here; published rows of the query's kernel on
its GPU; novel: no row of that kernel on that GPU), and the widening when a query uses a kernel, or a kernel on
an architecture, that no row of the engine covers.
Used by the fit (:mod:`models.engine_fit`), its validation and the facade alike."""
from __future__ import annotations

import numpy as np

from . import conformal

WIDEN = {"kernel": 2.0, "kernel_arch": 1.5}
MIN_KIND_ROWS = 20
KINDS = ("measured", "published", "novel")


def conformal_q(res: np.ndarray, groups: np.ndarray, kinds: np.ndarray | None = None) -> dict:
    """Per metric group, the finite-sample 90% quantile of |log residual| (pooled when a group has < 5).
    With ``kinds`` (:data:`KINDS`), also per kind of evidence where that kind has >= 20 residuals: under
    ``"measured"``, this project's own runs (on one GPU they fit far closer than third-party pages from many
    builds: one pooled quantile would be too wide for them and too narrow for the pages); under ``"published"``,
    every other row; under ``"novel"``, the rows whose kernel their fold never saw on their GPU, which have only
    the prior's per-GPU offsets. :func:`q_for` never gives a novel query less than the published quantile."""
    ok = np.isfinite(res)
    pooled = _q(np.abs(res[ok])) if ok.sum() >= 5 else 0.7
    out = {"all": pooled}
    for g in ("decode", "prefill", "throughput"):
        r = np.abs(res[ok & (groups == g)])
        out[g] = _q(r) if len(r) >= 5 else pooled * 1.5
    if kinds is not None:
        kinds = np.asarray(kinds)
        for k in KINDS:
            m = (kinds == k) if k != "published" else (kinds != "measured")
            if (ok & m).sum() >= MIN_KIND_ROWS and (ok & ~m).any():
                out[k] = conformal_q(res[m], groups[m])
    return out


def evidence_kind(gpu: str, measured, kernel: str | None = None, seen: dict | None = None) -> str:
    """Which quantile of :func:`q_for` applies: 'measured' for a GPU with measured rows; 'novel' where ``seen``
    (kernel -> GPUs with rows of it) is given and holds no row of ``kernel`` on ``gpu``; else 'published'."""
    if gpu in measured:
        return "measured"
    if seen is not None and gpu not in seen.get(kernel, ()):
        return "novel"
    return "published"


def kernel_gpus(kernels, gpus) -> dict:
    """kernel -> sorted GPUs that have rows of it (what :func:`evidence_kind` calls ``seen``)."""
    out: dict = {}
    for k, g in zip(kernels, gpus):
        out.setdefault(str(k), set()).add(str(g))
    return {k: sorted(v) for k, v in out.items()}


def row_kinds(kinds, kernels, gpus, seen: dict) -> np.ndarray:
    """Held-out rows' kinds of evidence against a fold's training rows ``seen``: measured rows stay 'measured';
    a published row is 'novel' where its kernel has no training row on its GPU."""
    return np.array([k if k == "measured" else evidence_kind(g, (), kn, seen)
                     for k, kn, g in zip(kinds, kernels, gpus)], dtype=object)


def q_for(q: dict, group: str, kind: str) -> float:
    """The interval quantile for a row or query of ``kind`` (measured here, published, or novel) and metric
    group. A novel query gets the wider of the novel rows' quantile and the published one. Held out by source
    (2026-12-02, same rows), this took SGLang's coverage from 89 / 82 / 78% to 96 / 94 / 79% (decode / prefill /
    throughput) and left vLLM's (91 / 88 / 90%) as it was; the novel rows' own quantile alone (a plain Mondrian
    split) had cost throughput coverage (vLLM 90 -> 82%, SGLang 78 -> 75%): throughput errors follow each source's
    serving set-up more than its kernels, and the novel cell without the largest novel source came out narrow."""
    def one(k):
        qq = q.get(k, q)
        return qq.get(group, qq["all"])
    if kind == "novel":
        return max(one("novel"), one("published")) if "novel" in q else one("published")
    return one(kind)


def _q(r: np.ndarray) -> float:
    return conformal.quantile(r)


def widen_factor(domain: dict, kernel: str, arch: str) -> tuple[float, list[str]]:
    if kernel not in domain:
        return WIDEN["kernel"], [f"no {kernel} rows: default kernel efficiencies"]
    if arch not in domain[kernel]:
        return WIDEN["kernel_arch"], [f"{kernel} never benchmarked on {arch}"]
    return 1.0, []
