"""Runtime side of the fitted cost model: features, a JSON-stored linear correction, intervals.

The fitted model predicts ``log(measured / analytical)`` for each target (decode step time, prefill
time, peak memory, J/token) from physically grounded features (roofline terms from the profiles, the
method, batch, context, backend), so that it carries to GPUs never measured: the analytical roofline
does the extrapolation and the correction only learns efficiency. Evaluating it needs numpy only (no
scikit-learn import on the ``recommend`` path); fitting lives in :mod:`models.fitted`.

Intervals: split-conformal quantiles of cross-validated log residuals (90%), widened when the query
is far from the data (another GPU, another GPU generation, a method never measured on that
architecture, a model much larger than any measured); the widening reasons are reported.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from profiles import GPU, LLM, Catalog, load

from .candidate import DEFAULT_KV, DEFAULT_SPARSITY, Candidate, Scenario
from .estimate import Estimate
from .memory import MemoryBreakdown

TARGETS = ("decode_ms", "prefill_ms", "peak_mem_gb", "j_per_token")


def _harness_precisions() -> tuple[str, ...]:
    """The precisions the measurement harness runs (the catalog's harness engine less its not_run), in catalog
    order: one fitted feature each (fitted.json stores the feature list: a changed list asks for a refit, never
    misreads)."""
    cat = load()
    harness = next(e for e in cat.engines.values() if e.runs_everything)
    return tuple(m.id for m in cat.methods_of("precision") if m.id not in (harness.get("not_run") or []))


PRECISIONS = _harness_precisions()
FEATURES = ("log_batch", "log_prompt", "eager", "eager_log_batch", "eager_layers", "sparse24", "drop_frac",
            "kv_int", "kv_fp8", "evict", "log_params", "log_util", "hopper", "log_bw", "eager_sparse24",
            "eager_kv_int", "v_unfused", "v_nocompile", "v_cdt") + tuple(f"p_{p}" for p in PRECISIONS) + \
    tuple(f"eager_p_{p}" for p in PRECISIONS)
# Compiled-backend variants of the measured rows, relative to the harness's default (regional-graph-fused),
# which is what a prediction describes (its features are 0): unmerged q|k|v / gate|up weights
# (regional-graph, regional), layers uncompiled inside the graph (regional-graph-nocompile), inductor
# coordinate-descent tuning (regional-graph-fused-cdt).
VARIANTS = {"regional-graph": "v_unfused", "regional": "v_unfused", "regional-graph-nocompile": "v_nocompile",
            "regional-graph-fused-cdt": "v_cdt"}
DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "fitted.json"
WIDEN = {"gpu": 1.5, "generation": 2.0, "method_arch": 1.5, "size": 1.5, "tp": 1.5}


def features(gpu: GPU, llm: LLM, cand: Candidate, sc: Scenario, utilisation: float,
             compile_mode: str | None = None) -> np.ndarray:
    """``compile_mode``: a measured row's compiled-backend variant (VARIANTS); None for a prediction."""
    eager = 1.0 if sc.backend == "eager" else 0.0
    layers = llm.num_hidden_layers - cand.dropped_layers
    kv_dequant = load().methods[cand.kv].get("kv_dequant")  # int / float: a quantized cache (methods.yaml)
    row = {
        "log_batch": math.log(sc.batch), "log_prompt": math.log(max(sc.prompt_len, 1)), "eager": eager,
        "eager_log_batch": eager * math.log(sc.batch), "eager_layers": eager * layers / 32,
        "sparse24": 1.0 if cand.sparsity.startswith("2:4") else 0.0,
        "drop_frac": cand.dropped_layers / llm.num_hidden_layers,
        "kv_int": 1.0 if kv_dequant == "int" else 0.0,
        "kv_fp8": 1.0 if kv_dequant == "float" else 0.0, "evict": 1.0 if cand.kv_budget else 0.0,
        "log_params": math.log(llm.published_params_b), "log_util": math.log(max(utilisation, 1e-4)),
        "hopper": 1.0 if gpu.cc[0] == 9 else 0.0, "log_bw": math.log(gpu.mem_bw_gbps / 1000),
    }
    for v in ("v_unfused", "v_nocompile", "v_cdt"):
        row[v] = 1.0 if not eager and VARIANTS.get(compile_mode or "") == v else 0.0
    row["eager_sparse24"] = eager * row["sparse24"]
    row["eager_kv_int"] = eager * row["kv_int"]
    for p in PRECISIONS:
        row[f"p_{p}"] = 1.0 if cand.precision == p else 0.0
        row[f"eager_p_{p}"] = eager * row[f"p_{p}"]
    return np.array([row[f] for f in FEATURES])


def sparsity_kind(sparsity: str) -> str:
    """dense, 2:4 (any mask) or drop (any count): what the interval widening asks was measured."""
    return "2:4" if sparsity.startswith("2:4") else "drop" if sparsity.startswith("drop") else DEFAULT_SPARSITY


def _count_models(rows, key) -> dict:
    seen: dict = {}
    for r in rows:
        seen.setdefault(key(r), set()).add(r[6])
    return {k: len(v) for k, v in seen.items()}


def domain_of(rows: list[tuple]) -> dict:
    """The training domain from (gpu id, cc major, params_b, precision, sparsity, backend, model id, kv) per row:
    per (method, backend, cc major), the number of models it was measured on, for the precision, the sparsity
    kind and the KV-cache policy apart."""
    def counts(key):
        return sorted([list(k), n] for k, n in _count_models(rows, key).items())
    return {"gpus": sorted({r[0] for r in rows}), "cc_majors": sorted({r[1] for r in rows}),
            "method_arch_models": counts(lambda r: (r[3], r[5], r[1])),
            "sparsity_arch_models": counts(lambda r: (sparsity_kind(r[4]), r[5], r[1])),
            "kv_arch_models": counts(lambda r: (r[7] if len(r) > 7 else DEFAULT_KV, r[5], r[1])),
            "max_params_b": max(r[2] for r in rows)}


def _model_counts(dom: dict, name: str) -> dict | None:
    """(method, backend, cc major) -> the number of models it was measured on, from ``dom[name + "_models"]``; a
    file fitted before the counts listed the keys alone (``dom[name]``): each counts as two models; neither: None
    (not checked)."""
    if f"{name}_models" in dom:
        return {tuple(k): n for k, n in dom[f"{name}_models"]}
    if name in dom:
        return {tuple(x): 2 for x in dom[name]}
    return None


def _reason(counts: dict | None, key: tuple, name: str, backend: str, arch: str, need: int = 2):
    """("method_arch", why) when ``key`` was measured on fewer than ``need`` models, else None (also for a file
    without the counts)."""
    n = counts.get(key, 0) if counts is not None else need
    if n >= need:
        return None
    return ("method_arch", f"{name} never measured with the {backend} backend on {arch}" if n == 0 else
            f"{name} with the {backend} backend on {arch} was measured on one model only")


class LinearCorrection:
    """``y = shrink x (intercept + (x - mean) / scale . coef)``, loaded from plain JSON (``shrink``: the share of the
    correction that carried over to held-out groups when it was fitted, models/fitted.py select_shrink)."""

    def __init__(self, d: dict):
        self.shrink = float(d.get("shrink", 1.0))
        self.coef = np.asarray(d["coef"], dtype=float)
        self.intercept = float(d["intercept"])
        self.mean = np.asarray(d["mean"], dtype=float)
        self.scale = np.asarray(d["scale"], dtype=float)
        self.q90 = float(d["q90"])
        self.q90_by_backend = {k: float(v) for k, v in d.get("q90_by_backend", {}).items()}

    def half_width(self, backend: str) -> float:
        """The 90% half-width (log) for a query of ``backend``: its own backend's conformal quantile where the fit
        had enough of its residuals (models/fitted.py conformal_q), else the pooled one."""
        return self.q90_by_backend.get(backend, self.q90)

    def predict(self, x: np.ndarray) -> float:
        return self.shrink * float(self.intercept + ((x - self.mean) / self.scale) @ self.coef)


class FittedCostModel:
    """All targets' corrections plus the training domain, from ``fitted.json``."""

    def __init__(self, doc: dict, path: Path | None = None):
        if doc.get("features") != list(FEATURES):
            raise ValueError("fitted model was built with other features; refit with `advisor fit`")
        self.doc, self.path = doc, path
        self.targets = {t: LinearCorrection(doc["targets"][t]) for t in doc["targets"]}
        dom = doc["domain"]
        self.gpus = set(dom["gpus"])
        self.cc_majors = set(dom["cc_majors"])
        # (precision / sparsity kind / KV policy, backend, cc major) -> models it was measured on
        self.method_models = _model_counts(dom, "method_arch")
        self.sparsity_models = _model_counts(dom, "sparsity_arch")
        self.kv_models = _model_counts(dom, "kv_arch")
        self.max_params_b = float(dom["max_params_b"])
        self.snapshot = doc.get("snapshot", "")

    @classmethod
    def load(cls, path: Path) -> "FittedCostModel":
        with open(path, encoding="utf-8") as fh:
            return cls(json.load(fh), Path(path))

    def far_reasons(self, gpu: GPU, llm: LLM, cand: Candidate, sc: Scenario) -> list[tuple[str, str]]:
        return self.far_reasons_of(gpu.id, gpu.cc[0], llm.id, llm.published_params_b, cand.precision,
                                   cand.sparsity, sc.backend, sc.num_gpus, cand.kv)

    def far_reasons_of(self, gpu_id: str, cc_major: int, model_id: str, params_b: float, precision: str,
                       sparsity: str, backend: str, num_gpus: int = 1, kv: str = DEFAULT_KV) -> list[tuple[str, str]]:
        """(kind, reason) for each way the query lies outside the measured domain (kind keys WIDEN). A
        precision, a sparsity and a KV policy each measured on fewer than two models each add a reason."""
        out = []
        arch = f"sm{cc_major}x"
        if cc_major not in self.cc_majors:
            out.append(("generation", f"{gpu_id} is another GPU generation ({arch}) than any measured"))
        elif gpu_id not in self.gpus:
            out.append(("gpu", f"{gpu_id} was never measured"))
        kind = sparsity_kind(sparsity)
        method = _reason(self.method_models, (precision, backend, cc_major), precision, backend, arch)
        reasons = [method]
        if kind != DEFAULT_SPARSITY:
            reasons.append(_reason(self.sparsity_models, (kind, backend, cc_major), sparsity, backend, arch))
        elif method is None:  # dense rows at all (a precision already short of rows says the same once)
            reasons.append(_reason(self.sparsity_models, (kind, backend, cc_major), sparsity, backend, arch, need=1))
        if kv != DEFAULT_KV:
            reasons.append(_reason(self.kv_models, (kv, backend, cc_major), kv, backend, arch))
        out += [r for r in reasons if r]
        if params_b > 1.5 * self.max_params_b:
            out.append(("size", f"{model_id} is much larger than any measured model ({self.max_params_b:g}B)"))
        if num_gpus > 1:
            out.append(("tp", f"tensor parallelism ({num_gpus} GPUs) was never measured: the single-GPU "
                              "efficiency correction is applied to each GPU's share"))
        return out

    def estimate(self, target: str, analytical: float, x: np.ndarray, far: list, unit: str,
                 floor: float = 0.0, backend: str = "") -> Estimate | None:
        t = self.targets.get(target)
        if t is None:
            return None
        value = max(analytical * math.exp(t.predict(x)), floor)
        half = t.half_width(backend)
        for kind, _ in far:
            half *= WIDEN[kind]
        lo, hi = max(value * math.exp(-half), floor), value * math.exp(half)
        why = "; ".join(r for _, r in far)
        detail = f"fitted correction on {self.snapshot}" + (f"; interval widened: {why}" if why else "")
        return Estimate(value, min(lo, value), hi, unit, "fitted", detail)

    def predict_one(self, cat: Catalog, gpu: GPU, llm: LLM, cand: Candidate, sc: Scenario, spd, mem: MemoryBreakdown):
        """Fitted (speed, memory, label) replacing the analytical ones, or None if not applicable."""
        if gpu.vendor != "nvidia":
            return None
        x = features(gpu, llm, cand, sc, spd.utilisation)
        far = self.far_reasons(gpu, llm, cand, sc)
        dec = self.estimate("decode_ms", spd.decode_step_ms.value, x, far, "ms", spd.roofline_decode_ms, sc.backend)
        pre = self.estimate("prefill_ms", spd.prefill_ms.value, x, far, "ms", spd.roofline_prefill_ms, sc.backend)
        if dec is None:
            return None
        tok = Estimate(sc.batch * 1e3 / dec.value, sc.batch * 1e3 / dec.high, sc.batch * 1e3 / dec.low, "tok/s",
                       "fitted", dec.detail)
        new_spd = replace(spd, decode_step_ms=dec, decode_tok_s=tok, per_seq_tok_s=tok.scale(1 / sc.batch),
                          prefill_ms=pre or spd.prefill_ms,
                          utilisation=min(1.0, spd.roofline_decode_ms / dec.value),
                          notes=spd.notes + [f"fitted: {r}" for _, r in far])
        m = self.estimate("peak_mem_gb", mem.per_gpu_gb.value, x, far, "GB", backend=sc.backend)
        new_mem = replace(mem, per_gpu_gb=m) if m else mem
        return new_spd, new_mem, "fitted"


def load_default(path: Path | None = None):
    """(model, note) for the CLI: the user's refit if present, else the shipped one, else None."""
    from .fit_store import user_model_path

    for p in (path, user_model_path(), DEFAULT_PATH):
        if p and Path(p).exists():
            try:
                m = FittedCostModel.load(Path(p))
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                return None, f"fitted model at {p} unusable ({e}); using the analytical cost model"
            return m, f"speed and memory: fitted cost model ({Path(p).name}, {m.snapshot})"
    return None, "speed and memory: analytical cost model (no fitted model found: `advisor fit` makes one)"
