"""The harness speed model's measured constants, derived by code from measured rows (not by hand).

models/speed.py (engine "transformers") takes a plain dict of constants (models.efficiency.CONSTANTS' shape):

- ``eager_host_ms_per_layer`` (ms per layer per step): host time of an eager bf16 decode step;
- ``eager_host_factor`` ({precision: dimensionless}) and ``eager_host_factor_24`` (2:4 semi-structured over
  dense): an eager step's host time relative to dense bf16's;
- ``kv_read_fraction`` ({backend: dimensionless}): fraction of the copy bandwidth reached on the KV bytes;
- ``kv_dequant_bytes_per_elem`` (bytes per cached element per step) and ``kvq_host_ms_per_layer`` ({kv cache:
  ms per layer per step}): what our quantized caches' per-step dequantization adds (eager).
- the kernel figures once read off the rows by hand (compiled fractions and per-layer ms, prefill compute
  fractions, the compiled step overhead, the 2:4, int4 and int8-wo batch costs): models/harness_fit_kernels.py.

:func:`fit_constants` derives them from a set of measured rows, each by the recipe the hand derivation
described (the functions' docstrings). Where the rows hold no evidence for a constant it takes a stated prior
(PRIORS), never anything outside the rows it was given: advisor validate calls it inside every fold on the
fold's training rows (models/fitted.py ``refit_analytical``). ``python -m models.harness_fit`` runs it on every
usable row of measurement/data/measurements.csv and writes models/data/harness_fitted.json, the shipped values.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from datetime import datetime, timezone

from profiles import Catalog, load

from . import efficiency as eff
from .candidate import DEFAULT_KV, DEFAULT_PRECISION, DEFAULT_SPARSITY, Scenario
from .measured_rows import row_candidate, usable_rows
from .harness_fit_kernels import KERNEL_PRIORS, fit_kernels, initial
from .harness_probe import eager_factor_prior, eager_nearest
from .roofline import decode_step, prefill_step
from .speed import _decode_time_s

SIG_DIGITS = 3  # significant digits kept (the hand values carried 2-3)
KV_READ_MIN_BATCH = 16  # the KV read dominates from here (the recipe's "batch >= 16")
KV_READ_MIN_PROMPT_EAGER = 4096  # the eager recipe's "batch 16-64 x prompt 4096 rows"
PRIORS = {
    "eager_host_ms_per_layer": "no eager bf16 row: the median ms per layer over the eager rows of the method whose "
                               "eager kernel probe is nearest bf16's (models/harness_probe.py), else over the eager "
                               "rows of every precision; no eager row at all: 0 (no host time modelled)",
    "eager_host_factor": "no batch-1 eager row of the precision: the factor of a measured precision with the same "
                         "harness kernels (harness_kernels.json kernels_of), else 1 + g (r - 1) with r its eager "
                         "kernel probe over bf16's and g the fitted methods' median share (models/harness_probe.py "
                         "eager_factor_prior), else bf16's 1.0",
    "eager_host_factor_24": "no batch-1 eager 2:4 row: dense's 1.0",
    "kv_read_fraction": "eager without batch >= 16 x prompt >= 4096 eager rows: the compiled fraction; "
                        "compiled without prompt pairs at batch >= 16: 1.0 (the copy bandwidth)",
    "kv_dequant_bytes_per_elem": "no quantized-cache rows at two batches: 0 (no dequantization traffic modelled)",
    "kvq_host_ms_per_layer": "no row of the cache: the median over the other quantized caches; none: 0",
    **KERNEL_PRIORS,
}


def _round(x: float) -> float:
    return float(f"{x:.{SIG_DIGITS}g}")


def _median(v: list[float]) -> float:
    return float(statistics.median(v))


def _rows(df, cat: Catalog) -> list[dict]:
    """Per measured row with a decode time: its profiles, candidate and scenario, measured ms per decode step
    (``ms``), kept layers, copy bandwidth (B/s), and the analytical decode step's KV bytes and elements."""
    out = []
    for _, r in df.iterrows():
        try:
            gpu, llm = cat.gpu(str(r["gpu"])), cat.llm(str(r["model"]))
            cand = row_candidate(r)
            sc = Scenario(int(r["batch"]), int(r["prompt_len"]), int(r["gen_len"]), str(r["backend"]), 1)
            step = decode_step(cat, llm, cand, sc)
            ms = float(r["decode_ms_per_token"])
            pstep = prefill_step(cat, llm, cand, sc)
            pre = float(r.get("prefill_ms") if r.get("prefill_ms") is not None else math.nan)
        except (LookupError, KeyError, ValueError, TypeError):
            continue
        if not (math.isfinite(ms) and ms > 0):
            continue
        kvm = cat.methods[cand.kv]
        out.append({"gpu": gpu, "llm": llm, "cand": cand, "sc": sc, "step": step, "ms": ms, "pstep": pstep,
                    "prefill_ms": pre if math.isfinite(pre) and pre > 0 else None,
                    "layers": llm.num_hidden_layers - cand.dropped_layers,
                    "copy_bw": gpu.mem_bw_gbps * 1e9 * eff.COPY_BW_FRACTION, "kvq": bool(kvm.get("kv_dequant")),
                    "kv_elems": step.kv_bytes / float(kvm.get("bytes_per_kv_elem") or 2.0),
                    "cm": r.get("compile_mode") if isinstance(r.get("compile_mode"), str) else None})
    return out


def _plain(r: dict, kv: bool = True) -> bool:
    """Dense, no eviction budget and (with ``kv``) the 16-bit cache."""
    c = r["cand"]
    return c.sparsity == DEFAULT_SPARSITY and c.kv_budget is None and (not kv or c.kv == DEFAULT_KV)


def _eager(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["sc"].backend == "eager"]


def eager_host_ms_per_layer(rows: list[dict], ev: dict) -> float:
    """Host ms per layer of an eager bf16 step: the median, over the eager bf16 rows (dense, 16-bit cache), of
    the measured decode ms per step over the model's layers (the hand recipe: 20 rows, 0.46-0.62, median
    0.55; the few GPU-bound rows among them sit above the median)."""
    ref = [r["ms"] / r["layers"] for r in _eager(rows) if _plain(r) and r["cand"].precision == DEFAULT_PRECISION]
    if ref:
        ev["eager_host_ms_per_layer"] = f"eager bf16 rows: {len(ref)}"
        return _median(ref)
    near = eager_nearest({r["cand"].precision for r in _eager(rows) if _plain(r)}, DEFAULT_PRECISION)
    if near:
        v = [r["ms"] / r["layers"] for r in _eager(rows) if _plain(r) and r["cand"].precision == near]
        ev["eager_host_ms_per_layer"] = (f"prior: {near}'s eager rows ({len(v)}), the method whose eager kernel probe "
                                         "is nearest bf16's")
        return _median(v)
    fam = [r["ms"] / r["layers"] for r in _eager(rows) if _plain(r)]
    ev["eager_host_ms_per_layer"] = f"prior: median over {len(fam)} eager rows of every precision" if fam else \
        "prior: 0 (no eager row)"
    return _median(fam) if fam else 0.0


def _bf16_batch1(rows: list[dict]) -> dict:
    """(gpu, model, prompt) -> measured ms of the dense bf16 eager batch-1 rows (median of repeats)."""
    by: dict = {}
    for r in _eager(rows):
        if _plain(r) and r["cand"].precision == DEFAULT_PRECISION and r["sc"].batch == 1:
            by.setdefault((r["gpu"].id, r["llm"].id, r["sc"].prompt_len), []).append(r["ms"])
    return {k: _median(v) for k, v in by.items()}


def _ratio(r: dict, ref: dict, base_ms_per_layer: float) -> float | None:
    """Measured ms over the dense bf16 batch-1 row's at the same GPU, model and prompt; without one, over the
    fitted bf16 host time (base x layers)."""
    den = ref.get((r["gpu"].id, r["llm"].id, r["sc"].prompt_len)) or base_ms_per_layer * r["layers"]
    return r["ms"] / den if den > 0 else None


def eager_host_factors(rows: list[dict], base_ms_per_layer: float, ev: dict) -> tuple[dict, float]:
    """({precision: factor}, 2:4 factor): an eager step's host time relative to dense bf16's. Per precision of
    the efficiency table, the median over its batch-1 eager rows (dense, 16-bit cache; batch 1 is host-bound)
    of the measured ms over bf16's (:func:`_ratio`); the hand recipe took llama3.1-8b batch 1 prompt 512 on
    the H100. 2:4: the bf16 2:4 rows at batch 1 over dense bf16's. Priors: PRIORS."""
    ref = _bf16_batch1(rows)
    b1 = [r for r in _eager(rows) if r["sc"].batch == 1 and r["cand"].kv == DEFAULT_KV and r["cand"].kv_budget is None]
    out, seen = {}, {}
    for p in eff.precisions():
        if p == DEFAULT_PRECISION:
            out[p] = 1.0
            continue
        v = [x for r in b1 if r["cand"].precision == p and _plain(r) and (x := _ratio(r, ref, base_ms_per_layer))]
        if v:
            out[p] = _median(v)
            seen[p] = len(v)
    fitted = {p: out[p] for p in seen}
    for p in eff.precisions():
        if p not in out:
            twin = eff.kernels_of(p) if eff.kernels_of(p) in out else None
            tr = None if twin else eager_factor_prior(p, fitted, DEFAULT_PRECISION)
            out[p] = out[twin] if twin else (tr[0] if tr else 1.0)
            ev[f"eager_host_factor[{p}]"] = f"prior: {twin}'s (same harness kernels)" if twin else (
                tr[1] if tr else "prior: 1.0")
        elif p in seen:
            ev[f"eager_host_factor[{p}]"] = f"batch-1 eager rows: {seen[p]}"
    out = {p: out[p] for p in eff.precisions()}
    v24 = [x for r in b1 if r["cand"].precision == DEFAULT_PRECISION and r["cand"].sparsity.startswith("2:4")
           and (x := _ratio(r, ref, base_ms_per_layer))]
    ev["eager_host_factor_24"] = f"batch-1 eager 2:4 rows: {len(v24)}" if v24 else "prior: 1.0"
    return out, (_median(v24) if v24 else 1.0)


def compiled_kv_read_fraction(rows: list[dict], ev: dict) -> float | None:
    """Compiled: per set of compiled rows alike but for the prompt (GPU, model, method, compile mode, batch >=
    16; 16-bit cache, no eviction), the extra KV bytes of its longest prompt over its shortest, over the copy
    bandwidth times the extra measured step time; the median over the sets (None: no set)."""
    by: dict = {}
    for r in rows:
        c = r["cand"]
        if r["sc"].backend == "compiled" and r["sc"].batch >= KV_READ_MIN_BATCH and _plain(r, kv=False) \
                and c.kv == DEFAULT_KV:
            key = (r["gpu"].id, r["llm"].id, c.precision, c.sparsity, r["cm"], r["sc"].batch)
            by.setdefault(key, {}).setdefault(r["sc"].prompt_len, []).append(r)
    fr = []
    for prompts in by.values():
        if len(prompts) < 2:
            continue
        lo, hi = prompts[min(prompts)], prompts[max(prompts)]
        dt = (_median([r["ms"] for r in hi]) - _median([r["ms"] for r in lo])) / 1e3
        dkv = hi[0]["step"].kv_bytes - lo[0]["step"].kv_bytes
        if dt > 0 and dkv > 0:
            fr.append(dkv / (hi[0]["copy_bw"] * dt))
    ev["kv_read_fraction[compiled]"] = f"prompt pairs: {len(fr)}" if fr else "prior: 1.0"
    return _median(fr) if fr else None


def eager_kv_read_fraction(rows: list[dict], constants: dict, cat: Catalog, ev: dict) -> float | None:
    """Eager: over the eager rows at batch >= 16 and prompt >= 4096 (16-bit cache), the KV bytes over the copy
    bandwidth times (measured step time minus the weight read: the analytical GPU time of the step with no KV
    read and no host time, ``constants`` otherwise); the median (None: no such row)."""
    nokv = {**constants, "kv_read_fraction": {"compiled": math.inf, "eager": math.inf},
            "eager_host_ms_per_layer": 0.0}
    fr = []
    for r in _eager(rows):
        if _plain(r) and r["sc"].batch >= KV_READ_MIN_BATCH and r["sc"].prompt_len >= KV_READ_MIN_PROMPT_EAGER:
            t_w = _decode_time_s(cat, r["gpu"], r["llm"], r["cand"], r["sc"], r["step"], [], nokv)
            t_kv = r["ms"] / 1e3 - t_w
            if t_kv > 0:
                fr.append(r["step"].kv_bytes / (r["copy_bw"] * t_kv))
    ev["kv_read_fraction[eager]"] = f"eager rows: {len(fr)}" if fr else "prior: the compiled fraction"
    return _median(fr) if fr else None


def kv_dequant(rows: list[dict], cat: Catalog, ev: dict) -> tuple[float, dict]:
    """(bytes per element, {kv cache: host ms per layer}) of the quantized caches' per-step dequantization.
    The extra of a quantized-cache eager row (dense, no eviction) is its measured ms minus that of the 16-bit
    cache's row alike (GPU, model, method, batch, prompt). Per set alike but for the batch, the extra at its
    largest batch minus at its smallest, over the extra cached elements, times the copy bandwidth, gives bytes
    per element: the median over sets and caches. The rest of the smallest batch's extra (minus its elements
    at those bytes), over the layers, gives each cache's host ms per layer (median over its sets)."""
    ref: dict = {}
    for r in _eager(rows):
        if _plain(r):
            ref.setdefault(_like(r), []).append(r["ms"])
    sets: dict = {}
    for r in _eager(rows):
        if r["kvq"] and _plain(r, kv=False) and _like(r) in ref:
            k = (r["cand"].kv, *_like(r)[:3], r["sc"].prompt_len)
            sets.setdefault(k, {})[r["sc"].batch] = (r["ms"] - _median(ref[_like(r)]), r)
    per_b = []
    for s in sets.values():
        if len(s) >= 2:
            (e_lo, r_lo), (e_hi, r_hi) = s[min(s)], s[max(s)]
            de = r_hi["kv_elems"] - r_lo["kv_elems"]
            if de > 0:
                per_b.append((e_hi - e_lo) / 1e3 * r_hi["copy_bw"] / de)
    nbytes = _median(per_b) if per_b else 0.0
    ev["kv_dequant_bytes_per_elem"] = f"batch pairs: {len(per_b)}" if per_b else "prior: 0"
    host: dict = {}
    for (kv, *_), s in sets.items():
        e_lo, r = s[min(s)]
        host.setdefault(kv, []).append((e_lo / 1e3 - r["kv_elems"] * nbytes / r["copy_bw"]) / r["layers"] * 1e3)
    fitted = {kv: _median(v) for kv, v in host.items()}
    out = {}
    for kv in (k for k, m in cat.methods.items() if m.get("kv_dequant")):
        if kv in fitted:
            out[kv] = max(fitted[kv], 0.0)
            ev[f"kvq_host_ms_per_layer[{kv}]"] = f"row sets: {len(host[kv])}"
        else:
            out[kv] = _median(list(fitted.values())) if fitted else 0.0
            ev[f"kvq_host_ms_per_layer[{kv}]"] = "prior: median of the other caches" if fitted else "prior: 0"
    return nbytes, out


def _like(r: dict) -> tuple:
    """What a quantized-cache row shares with its 16-bit reference: GPU, model, method, batch, prompt."""
    return r["gpu"].id, r["llm"].id, r["cand"].precision, r["sc"].batch, r["sc"].prompt_len


def fit_constants(df, cat: Catalog | None = None, evidence: dict | None = None) -> dict:
    """The constants dict (module docstring) derived from the measured rows of ``df`` (the dataset's columns;
    rows the harness model cannot place are skipped), rounded to SIG_DIGITS significant digits. ``evidence``,
    when given, is filled with what each constant rests on ("prior: ..." where PRIORS applied)."""
    cat = cat or load()
    ev = {} if evidence is None else evidence
    rows = _rows(df, cat)
    base = eager_host_ms_per_layer(rows, ev)
    factors, f24 = eager_host_factors(rows, base, ev)
    compiled = compiled_kv_read_fraction(rows, ev)
    c = {"eager_host_ms_per_layer": _round(base), "eager_host_factor": {p: _round(f) for p, f in factors.items()},
         "eager_host_factor_24": _round(f24)}
    eager = eager_kv_read_fraction(rows, c, cat, ev)
    compiled = _round(compiled if compiled is not None else 1.0)
    c["kv_read_fraction"] = {"compiled": compiled, "eager": compiled if eager is None else _round(eager)}
    nbytes, host = kv_dequant(rows, cat, ev)
    c["kv_dequant_bytes_per_elem"] = _round(nbytes)
    c["kvq_host_ms_per_layer"] = {k: _round(v) for k, v in host.items()}
    return fit_kernels(cat, rows, initial(c), ev, _round)


def shipped_document(df=None, cat: Catalog | None = None) -> dict:
    """What ``python -m models.harness_fit`` writes: the constants fitted on every usable row of the shipped
    dataset (or ``df``), with the rows behind each and the provenance."""
    if df is None:
        from measurement.dataset import load_dataset
        df = load_dataset()
    df = usable_rows(df)
    ev: dict = {}
    c = fit_constants(df, cat, ev)
    day = datetime.now(timezone.utc).date().isoformat()
    return {"about": "Measured constants of the harness speed model (models/speed.py), fitted by code: "
                     "models/harness_fit.py (each constant's recipe in its docstrings); read by models/efficiency.py. "
                     "Regenerate with: python -m models.harness_fit",
            "provenance": f"fitted by models/harness_fit.py on measurement/data/measurements.csv, {len(df)} rows, "
                          f"{day}",
            "rows": len(df), "snapshot": hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()[:12],
            "fitted_utc": day, "constants": c, "evidence": ev, "priors": PRIORS}


def main() -> None:
    from profiles.cache import write_text_atomic
    doc = shipped_document()
    write_text_atomic(eff.FITTED_PATH, json.dumps(doc, indent=1) + "\n")
    print(f"wrote {eff.FITTED_PATH} ({doc['provenance']})")
    print(json.dumps(doc["constants"], indent=1))


if __name__ == "__main__":
    main()
