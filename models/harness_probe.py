"""Kernel-probe figures (measurement/kernel_probe.py, rows in measurement/data/kernel_probe/*.jsonl) in the harness
cost model's own units, and the prior they give a method a validation fold has no rows of.

The probes time one decoder layer's projections per weight method on their own (random weights, an H200), so they
are evidence independent of the measured rows the cost model is fitted and validated on. Two figures per method
(the median over the probed models; dense only):

- ``bw_compiled``: the stored projection bytes (catalog ``bytes_per_weight``) over the compiled + CUDA-graph time at
  one row, as a fraction of the copy bandwidth the cost model uses (datasheet bandwidth x COPY_BW_FRACTION);
- ``compute``: the projections' FLOPs over the eager time at 8,192 rows (the harness prefills eagerly), as a
  fraction of the datasheet dense peak of the method's matmul dtype.

A single projection is not a whole decoder step (attention, norms, per-step overhead), so a probe figure is not the
cost model's constant: :func:`bw_prior` transfers it in time (the fitted methods' model time over their probe time),
:func:`compute_prior` as extra time per FLOP (what the fitted precisions' prefills spend beyond their probes), so
only the probe's ordering of methods and their gaps are taken on trust. :func:`row_factor_prior` and
:func:`reread_prior` read the batch costs of the int4 and int8 weight-only kernels straight off the probes above one
row (dimensionless growth, extra bytes).
"""
from __future__ import annotations

import json
import math
import statistics
from functools import lru_cache
from pathlib import Path

from profiles import load

from . import efficiency as eff
from .candidate import DEFAULT_SPARSITY, Candidate
from .memory import linear_bytes_per_weight
from .roofline import compute_dtype, peak_flops

PROBE_DIR = Path(__file__).resolve().parent.parent / "measurement" / "data" / "kernel_probe"
DECODE_ROWS = 1
PREFILL_ROWS = 8192
GRAPH_HOW = "compiled+graph"


def _read(f: Path) -> list[dict]:
    out = []
    for i, s in enumerate(f.read_text().splitlines(), 1):
        if s.strip():
            try:
                out.append(json.loads(s))
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: line {i}: not JSON ({e.msg})") from None
    return out


@lru_cache(maxsize=1)
def _shipped() -> tuple[dict, ...]:
    return tuple(r for f in sorted(PROBE_DIR.glob("*.jsonl")) for r in _read(f))


def probe_rows(path: Path | None = None) -> list[dict] | tuple[dict, ...]:
    """Every probe row (one JSON object per line) of ``path``, or of every *.jsonl under PROBE_DIR (read once per
    process: the priors of every validation fold read them)."""
    return _read(path) if path is not None else _shipped()


def gpu_of(row: dict) -> str:
    """The catalog GPU id of a probe row's CUDA device name (measurement.env.gpu_profile_id)."""
    from measurement.env import gpu_profile_id

    gid = gpu_profile_id(row["gpu_name"])
    if gid not in load().gpus:
        raise ValueError(f"probe row on {row['gpu_name']!r}: no catalog GPU for it")
    return gid


def roofline_us(row: dict) -> float:
    """The datasheet roofline of a probe row, microseconds: max(stored bytes / datasheet bandwidth, FLOPs / datasheet
    dense peak of the method's matmul dtype). A measured time below it is a bug."""
    gpu = load().gpus[gpu_of(row)]
    return max(_nbytes(row) / (gpu.mem_bw_gbps * 1e9), row["flops"] / peak_flops(gpu, compute_dtype(row["precision"], gpu))) * 1e6


def _fractions(row: dict) -> tuple[str, float] | None:
    s = row["us"] * 1e-6
    if row["mode"] == "graph" and row["rows"] == DECODE_ROWS and row["how"] == GRAPH_HOW:
        return "bw_compiled", _nbytes(row) / s / _copy_bw(row)
    if row["mode"] == "eager" and row["rows"] == PREFILL_ROWS:
        gpu = load().gpus[gpu_of(row)]
        return "compute", row["flops"] / s / peak_flops(gpu, compute_dtype(row["precision"], gpu))
    return None


@lru_cache(maxsize=1)
def probe_fractions() -> dict[str, dict[str, float]]:
    """{figure: {precision: median over the probed models}} for the dense probe rows."""
    by: dict[tuple[str, str], list[float]] = {}
    for r in probe_rows():
        if r["sparsity"] != DEFAULT_SPARSITY:
            continue
        f = _fractions(r)
        if f is not None:
            by.setdefault((f[0], r["precision"]), []).append(f[1])
    out: dict[str, dict[str, float]] = {"bw_compiled": {}, "compute": {}}
    for (fig, p), v in by.items():
        out[fig][p] = float(statistics.median(v))
    return out


def _one_row(precision: str, sparsity: str = DEFAULT_SPARSITY, rows: int = DECODE_ROWS) -> list[dict]:
    return [r for r in probe_rows() if r["precision"] == precision and r["sparsity"] == sparsity
            and r["mode"] == "graph" and r["rows"] == rows and r["how"] == GRAPH_HOW]


def _copy_bw(row: dict) -> float:
    return load().gpus[gpu_of(row)].mem_bw_gbps * 1e9 * eff.COPY_BW_FRACTION


def _nbytes(row: dict) -> float:
    cand = Candidate(precision=row["precision"], sparsity=row["sparsity"])
    return row["linear_params"] * linear_bytes_per_weight(load(), cand)


def bw_prior(precision: str, fitted: dict[str, tuple[float, float]], sparsity: str = DEFAULT_SPARSITY,
             rows: int = DECODE_ROWS) -> tuple[float, str] | None:
    """(compiled bandwidth fraction, evidence) for ``precision`` from its one-row probes, where ``fitted`` maps the
    methods fitted on the fold's rows to (fraction, fixed ms per layer). Transferred in time: k is the median, over
    the fitted methods' probes, of the cost model's projection time for the probed layer (its bytes at the fitted
    fraction plus the fixed ms per layer) over the probe's time; the prior is the fraction at which the method's
    probed layers take k times their probe time (median over the probed models), with no fixed ms per layer.
    ``sparsity`` and ``rows`` pick other probes of the method (2:4 kernels need 16 rows)."""
    mine = _one_row(precision, sparsity, rows)
    ks = [(_nbytes(r) / (_copy_bw(r) * f) + lay * 1e-3) / (r["us"] * 1e-6)
          for q, (f, lay) in fitted.items() if q != precision or sparsity != DEFAULT_SPARSITY for r in _one_row(q)]
    if not mine or not ks:
        return None
    k = float(statistics.median(ks))
    v = float(statistics.median([_nbytes(r) / (_copy_bw(r) * k * r["us"] * 1e-6) for r in mine]))
    return v, (f"prior: kernel probe ({len(mine)} models) at {k:.2f}x its time, the median model/probe time ratio "
               f"of {len(ks)} probes of {len(fitted)} fitted methods")


def compute_prior(precision: str, fitted: dict[str, float]) -> tuple[float, str] | None:
    """(prefill compute fraction, evidence) for ``precision`` from its probe, where ``fitted`` maps the precisions
    fitted on the fold's rows to their fractions. Transferred as time per FLOP: what a fitted precision's whole-model
    prefill spends beyond its probed projections (1 / (fitted fraction x peak) - 1 / (probe fraction x peak), seconds
    per FLOP at the probe GPU's datasheet peak of its matmul dtype) is about the same for every precision
    (attention, norms, host), so the prior adds the median of that to the method's own probe."""
    pf = probe_fractions()["compute"]
    rows = [r for r in probe_rows() if r["mode"] == "eager" and r["rows"] == PREFILL_ROWS]
    if precision not in pf or not rows:
        return None
    cat = load()
    gpu = cat.gpus[gpu_of(rows[0])]

    def peak(q):
        return peak_flops(gpu, compute_dtype(q, gpu))
    extra = [1 / (f * peak(q)) - 1 / (pf[q] * peak(q)) for q, f in fitted.items() if q in pf and q != precision]
    if not extra:
        return None
    x = float(statistics.median(extra))
    per_flop = 1 / (pf[precision] * peak(precision)) + x
    if per_flop <= 0:
        return None
    return 1 / (per_flop * peak(precision)), (f"prior: kernel probe {pf[precision]:.3f} plus the median extra time per "
                                              f"FLOP of {len(extra)} fitted precisions over their probes")


def sparse24_sparsity() -> str | None:
    """The 2:4 mask the probes ran (the kernels do not depend on how the mask was chosen), None without one."""
    return next((r["sparsity"] for r in probe_rows() if r["sparsity"].startswith("2:4")), None)


def _batch_pairs(cost: str) -> list[tuple[dict, dict]]:
    """(one-row probe, more-row probe) pairs of the same model and method, for the methods whose catalog
    ``kernels.compiled_batch_cost`` is ``cost``."""
    cat = load()
    ps = {p for p, m in cat.methods.items() if (m.get("kernels") or {}).get("compiled_batch_cost") == cost}
    rs = [r for r in probe_rows() if r["precision"] in ps and r["sparsity"] == DEFAULT_SPARSITY and r["mode"] == "graph"
          and r["how"] == GRAPH_HOW]
    one = {(r["model"], r["precision"]): r for r in rs if r["rows"] == 1}
    return [(one[(r["model"], r["precision"])], r) for r in rs if r["rows"] > 1 and (r["model"], r["precision"]) in one]


def row_factor_prior() -> tuple[float, str] | None:
    """(int4_compiled_row_factor, evidence): the median over the probes above one row of (time / one-row time - 1) /
    (rows - 1), the growth the cost model puts on the projections' streaming time."""
    v = [(b["us"] / a["us"] - 1) / (b["rows"] - 1) for a, b in _batch_pairs("row_factor")]
    return (float(statistics.median(v)), f"prior: kernel probes above one row: {len(v)}") if v else None


def reread_prior() -> tuple[float, str] | None:
    """(int8wo_compiled_bytes_per_weight_per_row, evidence): the median over the probes above one row of the time
    beyond the one-row time, times the copy bandwidth, over the projection weights times the rows."""
    v = [(b["us"] - a["us"]) * 1e-6 * _copy_bw(b) / (b["linear_params"] * b["rows"]) for a, b in _batch_pairs("weight_reread")]
    return (float(statistics.median(v)), f"prior: kernel probes above one row: {len(v)}") if v else None


def eager_nearest(precisions: set[str], reference: str) -> str | None:
    """Of ``precisions``, the one whose eager one-row probe (the host work of issuing a layer's projections
    eagerly) is nearest ``reference``'s: the median over the probed models of its time over the reference's, the
    smallest |log| wins; None where no probed model has both."""
    best = None
    for q in sorted(precisions):
        r = _eager_ratio(q, reference)
        if r is not None and (best is None or abs(math.log(r)) < best[0]):
            best = (abs(math.log(r)), q)
    return best[1] if best else None


def _eager_ratio(precision: str, reference: str) -> float | None:
    one = {(r["model"], r["precision"]): r["us"] for r in probe_rows()
           if r["mode"] == "eager" and r["rows"] == 1 and r["sparsity"] == DEFAULT_SPARSITY}
    v = [one[(m, precision)] / one[(m, p)] for (m, p) in one if p == reference and (m, precision) in one]
    return float(statistics.median(v)) if v else None


def eager_factor_prior(precision: str, fitted: dict[str, float], reference: str) -> tuple[float, str] | None:
    """(eager host factor, evidence) of ``precision`` (its eager step's host time over ``reference``'s) where no row
    measures it: its eager one-row probe over the reference's, r, taken as extra host work: 1 + g (r - 1), g the
    median over the methods in ``fitted`` (factors fitted on rows) of (factor - 1) / (r - 1): the share of a layer's
    extra projection-issue time that shows in a whole eager step. None without probes."""
    r = _eager_ratio(precision, reference)
    g = [(f - 1) / (rq - 1) for q, f in fitted.items() if q not in (precision, reference)
         and (rq := _eager_ratio(q, reference)) is not None and rq > 1.05]
    if r is None or not g:
        return None
    gm = float(statistics.median(g))
    return max(1.0 + gm * (r - 1), 1.0), (f"prior: eager kernel probe {r:.2f}x {reference}'s, at the median share "
                                          f"{gm:.2f} of {len(g)} fitted methods")
