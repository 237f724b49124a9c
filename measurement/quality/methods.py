"""Glue between a campaign row's method spec and :mod:`measurement.apply` (which applies every method
for real: bitsandbytes, torchao, AWQ scales, 2:4 masks + semi-structured kernels, ShortGPT layer drop,
KV-cache quantization / eviction). Nothing is re-implemented here.
"""
from __future__ import annotations

import re

from measurement.kv_cache import make_kv_cache
from measurement.method_base import Unsupported, notes_of
from measurement.precision import apply_precision
from measurement.sparsity import apply_sparsity

from .plan import GPTQ_FALLBACK, VARIANTS, base

# Row names that are not apply.py method ids: (apply.py precision, use calibration, simulate), from plan.yaml
PRECISION_ALIASES = {n: (v["method"], v["calibration"], v["simulate"]) for n, v in VARIANTS.items()}
KV_RESIDUAL_METRICS = {"ppl_decode_res0": 0}  # quantized KV with no 16-bit residual window
BASELINE_METRIC = {"ppl_decode_res0": "ppl_decode"}  # same protocol, same full-cache baseline


def calib_list(calib, per_batch: int = 4) -> list:
    """[N, seq] token windows -> list of [per_batch, seq] tensors (apply.py's calib_batches)."""
    if calib is None:
        return []
    return [calib[i: i + per_batch] for i in range(0, calib.shape[0], per_batch)]


def apply_methods(model, spec: dict, calib) -> tuple[object, list[str]]:
    """Sparsity first (masks / dropped layers), then precision. Returns (model, notes)."""
    batches = calib_list(calib)
    p, s = spec["precision"], spec["sparsity"]
    ref = base()  # the reference precision / sparsity: nothing to apply
    notes: list[str] = []
    if s != ref["sparsity"]:
        kw = {}
        if p != ref["precision"] and s.startswith("2:4"):
            # a quantizer reads dense weights: keep the masked weights dense, then quantize them
            kw["semi_structured"] = False
            notes.append("2:4 mask kept in dense storage so the quantizer can read it")
        model = apply_sparsity(model, s, calib_batches=batches, **kw)
    if p in GPTQ_FALLBACK:
        try:
            model = apply_precision(model, p, calib_batches=batches)
        except Unsupported as e:
            from .gptq import apply_gptq_int4

            notes.append(f"apply.py: {str(e)[:120]}")
            model = apply_gptq_int4(model, batches)
    elif p != ref["precision"]:
        real, with_calib, sim = PRECISION_ALIASES.get(p, (p, True, False))
        model = apply_precision(model, real, calib_batches=batches if with_calib else None,
                                **({"simulate": True} if sim else {}))
        if real != p:
            notes.append(f"{p}: apply_precision('{real}'"
                         + (", calibration" if with_calib else ", no calibration: round-to-nearest")
                         + (", simulate=True)" if sim else ")"))
    notes.extend(notes_of(model))
    return model, notes


def cache_factory(spec: dict, model) -> tuple[object, list[str]]:
    """A ``factory(batch) -> cache`` for :func:`.evaluate.ppl_decode`, and notes. Each call detaches
    the previous cache's query hooks (SnapKV / PyramidKV) before making a new one."""
    kv, budget = spec["kv"], spec.get("kv_budget")
    kw = {}
    if spec["metric"] in KV_RESIDUAL_METRICS:
        kw["residual"] = KV_RESIDUAL_METRICS[spec["metric"]]
    state = {"cache": None, "notes": ""}

    def factory(batch: int):
        old = state["cache"]
        if old is not None and hasattr(old, "detach"):
            old.detach()
        cache, notes = make_kv_cache(kv, model.config, budget=budget, model=model, **kw)
        state["cache"], state["notes"] = cache, notes
        return cache

    _, notes = make_kv_cache(kv, model.config, budget=budget, **kw)
    notes = re.sub(r"; no model attached.*$", "; real post-rope queries of the last prompt window (hooks)", notes)
    if kw:
        notes += f"; residual {kw['residual']}"
    return factory, [notes]


def classify_error(e: BaseException) -> tuple[str, str]:
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
    if isinstance(e, Unsupported):
        return "unsupported", str(e)[:400]
    # torch.cuda.OutOfMemoryError by its name, so that the check needs no torch import
    if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
        return "error", "does not fit (out of memory): " + msg
    return "error", msg
