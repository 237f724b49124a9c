"""Efficiency factors of the analytical cost model, each with where it came from.

``bw``: fraction of the *measured copy bandwidth* that a method's projection kernels reach in
decode (few rows). ``compute``: fraction of the dtype's dense tensor peak reached in prefill.
Copy bandwidth itself is ``COPY_BW_FRACTION`` of the datasheet bandwidth.

The per-method figures (``bw``, ``compute``, ``layer_ms``, CUDA graph capture) are parameter data of the
harness: ``models/data/harness_kernels.json``, read once, with each figure's provenance. That file's ``sources`` defines the source keys used there and in
the comments below: PROBE (one projection timed on an H200, shared/gpu-notes.md), TORCHAO (pytorch/ao's
benchmark table), FUSED (the regional-graph-fused rows of measurement/data/measurements.csv) and PREFILL
(the long prefills of measurement/data/measurements.csv).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

# Measured copy bandwidth / datasheet: H200 4.29 of 4.8 TB/s (gpu-notes), H100 ~3.0 of 3.35
# (device KINDS.md). Both 0.89-0.90.
COPY_BW_FRACTION = 0.89
# bf16 8192^3 matmul: 788 of 989 TFLOP/s on an H200 (device KINDS.md) = 0.80.
MATMUL_FRACTION = 0.80

KERNELS_PATH = Path(__file__).resolve().parent / "data" / "harness_kernels.json"


@lru_cache(maxsize=1)
def _table() -> dict:
    """models/data/harness_kernels.json, parsed once."""
    return json.loads(KERNELS_PATH.read_text())


# precision id -> dict(bw={backend: fraction}, compute=..., layer_ms={backend: ms}, graphs=bool, src=...)
_KERNELS = _table()["precisions"]

# 2:4 semi-structured (cuSPARSELt), bf16, needs >= 16 rows: 76.5 us graph / 308 us eager at 16 rows
# against a 15.4 us floor for its 1.125 bytes per weight (PROBE): eager 0.05; compiled 0.20 is the prior of the
# fitted compiled fraction. Compiled: fraction and row factor (the compiled time's growth per row above 16 rows)
# fitted by code on the FUSED 2:4 rows (CONSTANTS["sparse24"], models/harness_fit_kernels.py; the hand values
# were 0.12 and +0.016 per row). Dense-speed prefill assumed (no speedup measured).
SPARSE_24 = dict(bw={"eager": 0.05}, probe_bw_compiled=round(15.4 / 76.5, 2), compute_speedup=1.0,
                 src="compiled: FUSED 2:4 rows, fitted by code; eager PROBE: 2:4 bf16 308 us at 16 rows; dense-speed "
                     "prefill assumed (no speedup measured)")

# Methods that dequantize to 16 bit and run a 16-bit GEMM above a few rows (bnb-nf4): the dequantized
# weights are written and read by separate kernels, not streamed by a GEMV: the PROBE cuBLAS fraction
# (0.84), not FUSED's; with 1.04 the 8B nf4 rows at batch 4-64 came out 18% too fast (median).
DEQUANT_PATH_BW = {"compiled": 0.84, "eager": 0.82}
# compiled: fixed per-step cost of the small kernels (norms, rotary, KV write, attention at small context,
# sampling) per layer, added to the GPU time: CONSTANTS["compiled_step_ms_per_layer"], fitted by code jointly with
# the bf16 compiled fraction on the FUSED batch-1 rows (two unknowns, two model sizes; hand values 0.044 and 1.04).
# (The unmerged regional-graph rows gave 0.028-0.041 ms per layer at a 0.84 fraction on six models, H100 and H200:
# the prior where a fold has no FUSED bf16 row.)
# eager: the host issues every kernel from Python, so a step takes max(GPU time, host time): the host ms per
# layer of an eager bf16 step, CONSTANTS["eager_host_ms_per_layer"] below.
#
# The measured constants of the eager host, the KV read and the quantized caches' dequantization (and the kernel
# figures above: models/harness_fit_kernels.py) are fitted by code, not by hand: models/harness_fit.py derives them from the rows of measurement/data/measurements.csv
# (each constant's recipe in its docstrings) and ``python -m models.harness_fit`` writes them, with their
# provenance and the rows behind each, to models/data/harness_fitted.json; advisor validate refits them inside
# every fold on its training rows only. CONSTANTS is that file's plain dict; models.speed.predict_speed takes
# another one (``constants=``) for a fold:
#   eager_host_ms_per_layer: host ms per layer of an eager bf16 step (median over the eager bf16 rows);
#   eager_host_factor[precision], eager_host_factor_24 (2:4 semi-structured): host time of an eager step
#     relative to dense bf16's (more Python-issued kernels per projection), from batch-1 rows;
#   kv_read_fraction[backend]: fraction of the copy bandwidth reached on the KV-cache bytes in decode
#     (compiled: the extra step time from a longer prompt at batch >= 16; eager: the batch >= 16 x prompt
#     >= 4096 rows, measured ms minus the weight read over the KV bytes);
#   kv_dequant_bytes_per_elem, kvq_host_ms_per_layer[kv]: our quantized caches (eager only) dequantize the
#     whole cache on every step through a chain of torch ops issued from Python: GPU bytes per cached element
#     plus a host cost per layer, both added to the step (from the quantized-cache rows at two batches).
FITTED_PATH = Path(__file__).resolve().parent / "data" / "harness_fitted.json"


@lru_cache(maxsize=1)
def _fitted() -> dict:
    """models/data/harness_fitted.json, parsed once."""
    return json.loads(FITTED_PATH.read_text())


CONSTANTS: dict = _fitted()["constants"]
STEP_OVERHEAD_MS_PER_LAYER = {"compiled": CONSTANTS["compiled_step_ms_per_layer"],
                              "eager": CONSTANTS["eager_host_ms_per_layer"]}
EAGER_HOST_FACTOR = CONSTANTS["eager_host_factor"]
EAGER_HOST_FACTOR_24 = CONSTANTS["eager_host_factor_24"]
KV_READ_FRACTION = CONSTANTS["kv_read_fraction"]
KV_DEQUANT_BYTES_PER_ELEM = CONSTANTS["kv_dequant_bytes_per_elem"]
KVQ_HOST_MS_PER_LAYER = CONSTANTS["kvq_host_ms_per_layer"]
# torchao 0.18 Int8WeightOnlyConfig under inductor (torch 2.11) at more than one row per step: 144 ms at
# batch 8, 516 at 32, 1024 at 64 for Llama-3.1-8B on the H200 (3.6 ms at batch 1), i.e. ~16 ms per row,
# as if every row re-read and dequantized all int8 weights: bytes per weight per row at the copy bandwidth,
# CONSTANTS["int8wo_compiled_bytes_per_weight_per_row"], fitted by code on those rows (hand value 9.0, from
# 16 ms x 4.25 TB/s / 7.5e9 int8 weights). Eager int8-wo does not do this (32 ms at batch 16 on the H100).
INT8WO_COMPILED_BYTES_PER_WEIGHT_PER_ROW = CONSTANTS["int8wo_compiled_bytes_per_weight_per_row"]
# int4 g128 weight-only in the measured stack (torchao tile_packed_to_4d, compiled): the linear time grows
# with the rows of the step, by CONSTANTS["int4_compiled_row_factor"] of the one-row time per extra row, fitted by
# code on the compiled int4 rows above batch 1 (hand value 0.15, from llama3.1-8b on the H100: the linear part is
# 2.0x at batch 8 and 6.3x at batch 32; llama3.2-1b/3b 2.5x-3.0x at batch 16).
INT4_COMPILED_ROW_FACTOR = CONSTANTS["int4_compiled_row_factor"]
STEP_OVERHEAD_SRC = ("compiled: regional-graph-fused rows, eager: eager rows; both fitted by models/harness_fit.py on "
                     "both in measurement/data/measurements.csv")

# Relative error carried on a speed prediction: probe GPU (H200/H100) vs other GPUs.
REL_ERR_SAME_ARCH = 0.25
REL_ERR_OTHER_ARCH = 0.45


def precisions() -> list[str]:
    """The precision ids the harness's efficiency table covers (its speed model predicts only these)."""
    return list(_KERNELS)


def kernel(precision: str) -> dict:
    return _KERNELS[precision]


def kernels_of(precision: str) -> str:
    """The precision whose harness kernels (and fitted figures) ``precision`` shares (itself where none)."""
    return _KERNELS[precision].get("kernels_of", precision)


def fitted_figures(precision: str) -> list[str]:
    """The figures of ``precision`` fitted by code from measured rows (harness_kernels.json ``fit``)."""
    return list(_KERNELS[precision].get("fit", []))


def layer_ms(precision: str, backend: str, c: dict | None = None) -> float:
    """Extra fixed GPU ms per layer per step of a method's kernels (0 where none was measured); the compiled
    figures fitted by code come from the constants ``c`` (default the shipped ones)."""
    c = CONSTANTS if c is None else c
    if backend == "compiled" and precision in c["layer_ms_compiled"]:
        return c["layer_ms_compiled"][precision]
    return _KERNELS[precision].get("layer_ms", {}).get(backend, 0.0)


def bw_fraction(precision: str, backend: str, c: dict | None = None) -> float:
    """Decode bandwidth fraction of a method's projections: fitted by code (constants ``c``) where it is, else the
    harness_kernels.json figure (PROBE, TORCHAO)."""
    c = CONSTANTS if c is None else c
    if backend == "compiled" and precision in c["bw_compiled"]:
        return c["bw_compiled"][precision]
    return _KERNELS[precision]["bw"][backend]


def compute_fraction(precision: str, c: dict | None = None) -> float:
    """Prefill fraction of the dtype's dense peak: fitted by code (constants ``c``) where it is, else the table's."""
    c = CONSTANTS if c is None else c
    return c["compute"][precision] if precision in c["compute"] else _KERNELS[precision]["compute"]


def sparse24_bw(backend: str, c: dict | None = None) -> float:
    """2:4 projections' bandwidth fraction: compiled fitted by code (constants ``c``), eager PROBE."""
    c = CONSTANTS if c is None else c
    return c["sparse24"]["bw_compiled"] if backend == "compiled" else SPARSE_24["bw"][backend]


def uses_graphs(precision: str, backend: str) -> bool:
    return backend == "compiled" and _KERNELS[precision].get("graphs", True)
