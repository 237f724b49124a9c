"""Efficiency factors of the analytical cost model, each with where it came from.

``bw``: fraction of the *measured copy bandwidth* that a method's projection kernels reach in
decode (few rows). ``compute``: fraction of the dtype's dense tensor peak reached in prefill.
Copy bandwidth itself is ``COPY_BW_FRACTION`` of the datasheet bandwidth.

Sources:
- PROBE: shared/gpu-notes.md (2026-11-21), one 4096x14336 projection on an H200, 200 calls after
  warm-up, CUDA graph replay for ``compiled`` and plain calls for ``eager``; the bf16 floor
  (weights read once at the measured 4.29 TB/s) is 27.4 us. Fraction = floor x (method bytes /
  bf16 bytes) / measured time.
- TORCHAO: pytorch/ao torchao/quantization/README.md benchmark table (A100, Llama-3-8B,
  torch.compile, batch 1): bf16 95.6, int8wo 153.0, int8dq 8.6 tok/s.
- PREFILL: measurement/data/measurements.csv, prefills of >= 8192 tokens (batch x prompt), H100 and
  H200: the earlier fraction times the median of analytical / measured prefill time per precision
  (bf16 0.52 over 77 rows, fp8 0.33 over 17, int8-wo 0.62 over 6, bnb-nf4 0.5 over 2, awq-int4 0.04 over
  5, bnb-int8 0.40 over 1). Both measured backends prefill through transformers' eager forward.
"""
from __future__ import annotations

# Measured copy bandwidth / datasheet: H200 4.29 of 4.8 TB/s (gpu-notes), H100 ~3.0 of 3.35
# (device KINDS.md). Both 0.89-0.90.
COPY_BW_FRACTION = 0.89
# bf16 8192^3 matmul: 788 of 989 TFLOP/s on an H200 (device KINDS.md) = 0.80.
MATMUL_FRACTION = 0.80

# (precision, backend) -> dict(bw=..., compute=..., graphs=bool, src=...)
_KERNELS = {
    "bf16": dict(bw={"compiled": 0.84, "eager": 0.82}, compute=0.42,
                 src="PROBE: 27.4/32.5 us graph, 27.4/33.3 eager; compute: PREFILL"),
    "fp16": dict(bw={"compiled": 0.84, "eager": 0.82}, compute=0.42, src="PROBE, PREFILL (bf16's cuBLAS path)"),
    "fp8": dict(bw={"compiled": 0.90, "eager": 0.063}, compute=0.20, layer_ms={"compiled": 0.07},
                src="compiled: llama3.1-8b batch 1 regional-graph rows, 5.45 ms on the H200 and 5.95 on the H100: "
                    "the 1.4x bandwidth ratio moves fp8 only 1.09x, so most of its step is a fixed cost (dynamic "
                    "activation quantization kernels): weights at 0.9 of copy bandwidth plus 0.07 ms per layer "
                    "fit both; eager PROBE 216 us (launch-bound); compute: PREFILL"),
    "int8-wo": dict(bw={"compiled": 0.71, "eager": 0.071}, compute=0.37,
                    src="TORCHAO: int8wo/bf16 = 1.60x at 0.53x bytes -> 0.85 x bf16's 0.84; eager PROBE 192 us; "
                        "compute: PREFILL"),
    "w8a8": dict(bw={"compiled": 0.045, "eager": 0.018}, compute=0.60,
                 src="TORCHAO: int8dq/bf16 = 0.09x at 0.53x bytes; eager PROBE 763 us"),
    "bnb-int8": dict(bw={"compiled": 0.117, "eager": 0.117}, compute=0.12, graphs=False,
                     src="PROBE: LLM.int8 116.8 us eager; fails CUDA graph capture; compute: PREFILL (one row)"),
    "bnb-nf4": dict(bw={"compiled": 0.26, "eager": 0.26}, compute=0.40,
                    src="PROBE: nf4 29.2 us graph / 30.0 eager at 1 row; above 1 row dequantize + bf16 GEMM"),
    "awq-int4": dict(bw={"compiled": 0.39, "eager": 0.23}, compute=0.032,
                     src="PROBE: torchao int4 tile_packed_to_4d g128 18.9 us graph / 31.1 eager at 1 row; compute: "
                         "PREFILL (that kernel prefills at ~2k tokens/s: no dequantize-to-GEMM path for large M)"),
    "gptq-int4": dict(bw={"compiled": 0.39, "eager": 0.23}, compute=0.032,
                      src="PROBE, PREFILL (same int4 g128 kernel as awq-int4 in the measured stack)"),
}
# 2:4 semi-structured (cuSPARSELt), bf16, needs >= 16 rows: 76.5 us graph / 308 us eager at 16 rows
# against a 15.4 us floor for its 1.125 bytes per weight.
SPARSE_24 = dict(bw={"compiled": 0.20, "eager": 0.05}, compute_speedup=1.0,
                 src="PROBE: 2:4 bf16 76.5 us graph at 16 rows; dense-speed prefill assumed (no speedup measured)")

# compiled: fixed per-step cost of the small kernels (norms, rotary, KV write, attention at small context,
# sampling) per layer, added to the GPU time. Measured with the regional-graph compiled backend
# (measurement/decode_graph.py; measurement/data/measurements.csv, compile_mode regional-graph): the
# bf16 batch-1 step minus the weight read at the bf16 fraction, over the layers: 0.028-0.041 ms per layer
# on six models (1B-8B) on the H100 and H200; 0.03 is the median.
# eager: the host issues every kernel from Python, so a step takes max(GPU time, host time); host time
# per layer measured in measurement/data/measurements.csv (20 eager bf16 rows, H100 and H200 VMs,
# six models from 1B to 8B): 0.46-0.62 ms per layer, independent of model size; 0.55 is the median.
STEP_OVERHEAD_MS_PER_LAYER = {"compiled": 0.03, "eager": 0.55}
# Eager host time of a method relative to bf16 (more Python-issued kernels per projection), measured
# on the same machine: llama3.1-8b batch 1 prompt 512 on the H100, decode ms/step over bf16's 19.87
# (measurement/data/measurements.csv). gptq-int4 shares awq-int4's int4 kernel path.
EAGER_HOST_FACTOR = {"bf16": 1.0, "fp16": 1.0, "awq-int4": 1.16, "gptq-int4": 1.16, "bnb-nf4": 1.20,
                     "int8-wo": 1.51, "fp8": 4.60, "bnb-int8": 4.48, "w8a8": 1.0}
EAGER_HOST_FACTOR_24 = 9.23  # 2:4 semi-structured: 183.4 ms vs 19.87 (same rows)
# Decode attention over the KV cache: fraction of the copy bandwidth achieved on the KV bytes.
# compiled (regional-graph: grouped-query attention reads each cached element once): the extra step
# time from a longer prompt at the same batch, over the extra KV bytes, is 0.86-0.97 once the KV read is
# large (batch >= 16; six models, H100 and H200); 0.9. eager (transformers' DynamicCache sdpa path):
# 0.30, from the batch 16-64 x prompt 4096 rows (measured ms minus the weight read, over the KV bytes).
KV_READ_FRACTION = {"compiled": 0.90, "eager": 0.30}
# torchao 0.18 Int8WeightOnlyConfig under inductor (torch 2.11) at more than one row per step: 144 ms at
# batch 8, 516 at 32, 1024 at 64 for Llama-3.1-8B on the H200 (3.6 ms at batch 1), i.e. ~16 ms per row,
# as if every row re-read and dequantized all int8 weights: bytes per weight per row at the copy
# bandwidth, from 16 ms x 4.25 TB/s / 7.5e9 int8 weights. Eager int8-wo does not do this (32 ms at batch 16 on the H100).
INT8WO_COMPILED_BYTES_PER_WEIGHT_PER_ROW = 9.0
# Our quantized caches (eager only) dequantize the whole cache on every step through a chain of torch
# ops issued from Python: a host cost per layer plus GPU bytes per cached element, both added to the
# step. Fitted on the kv-fp8/int8/int4/int2 eager rows of llama3.1-8b at prompt 4096, batch 1 and 8,
# on the H200 (extra ms over the 16-bit cache: batch 1 12.5-22.9, batch 8 20.8-32.9): the batch-8 minus
# batch-1 difference over the extra elements gives 19-29 bytes per element (24 taken); the rest of the
# batch-1 extra, over 32 layers, the host ms per layer below.
KV_DEQUANT_BYTES_PER_ELEM = 24.0
KVQ_HOST_MS_PER_LAYER = {"kv-fp8": 0.35, "kv-int8": 0.42, "kv-int4": 0.58, "kv-int2": 0.67}
# int4 g128 weight-only in the measured stack (torchao tile_packed_to_4d, compiled): the linear time grows
# with the rows of the step, about +0.15 of the one-row time per extra row (llama3.1-8b on the H100: the
# linear part is 2.0x at batch 8 and 6.3x at batch 32; llama3.2-1b/3b 2.5x-3.0x at batch 16).
INT4_COMPILED_ROW_FACTOR = 0.15
STEP_OVERHEAD_SRC = ("compiled: regional-graph rows, eager: measured host time per layer; both in "
                     "measurement/data/measurements.csv")

# Relative error carried on a speed prediction: probe GPU (H200/H100) vs other GPUs.
REL_ERR_SAME_ARCH = 0.25
REL_ERR_OTHER_ARCH = 0.45


def kernel(precision: str) -> dict:
    return _KERNELS[precision]


def layer_ms(precision: str, backend: str) -> float:
    """Extra fixed GPU ms per layer per step of a method's kernels (0 where none was measured)."""
    return _KERNELS[precision].get("layer_ms", {}).get(backend, 0.0)


def bw_fraction(precision: str, backend: str) -> float:
    return _KERNELS[precision]["bw"][backend]


def uses_graphs(precision: str, backend: str) -> bool:
    return backend == "compiled" and _KERNELS[precision].get("graphs", True)
