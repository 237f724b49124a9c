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
- FUSED: measurement/data/measurements.csv, compile_mode regional-graph-fused (the harness's default
  compiled backend since the third session: merged q|k|v and gate|up weights, one CUDA graph per step),
  batch-1 rows of llama3.1-8b (prompt 512 and 2048, three H200s, calls 12-14) and llama3.1-70b (call
  15); each method's (bandwidth fraction, ms per layer) chosen by least squares on log time with the
  bf16 constants fixed. Rows of the unmerged regional-graph backend (calls 7-10) are fitted through a
  feature of the correction (models/correction.py), not through these constants.
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
    # compiled 1.04: FUSED, with STEP_OVERHEAD_MS_PER_LAYER["compiled"] (8B 4.72-4.77 ms, 70B 34.97 ms at
    # prompt 512; every row within 2%). Above 1 because the copy bandwidth it multiplies counts a read and
    # a write per byte, and the decode GEMVs only read: 70B's large matrices stream at ~94% of that figure
    # with the small kernels included.
    "bf16": dict(bw={"compiled": 1.04, "eager": 0.82}, compute=0.42,
                 src="compiled: FUSED; eager: PROBE 27.4/33.3 us; compute: PREFILL"),
    "fp16": dict(bw={"compiled": 1.04, "eager": 0.82}, compute=0.42, src="FUSED, PROBE, PREFILL (bf16's cuBLAS path)"),
    "fp8": dict(bw={"compiled": 0.72, "eager": 0.063}, compute=0.20, layer_ms={"compiled": 0.05},
                src="compiled: FUSED (8B 5.42-5.57 ms, 70B 29.9-30.3 ms at batch 1: within 3%); fp8 moves the "
                    "8B only 1.1x against bf16 at 0.57x the bytes, a fixed per-layer cost (dynamic activation "
                    "quantization kernels); eager PROBE 216 us (launch-bound); compute: PREFILL"),
    "int8-wo": dict(bw={"compiled": 0.71, "eager": 0.071}, compute=0.37,
                    src="TORCHAO: int8wo/bf16 = 1.60x at 0.53x bytes -> 0.85 x bf16's 0.84; eager PROBE 192 us; "
                        "compute: PREFILL"),
    "w8a8": dict(bw={"compiled": 0.045, "eager": 0.018}, compute=0.60,
                 src="TORCHAO: int8dq/bf16 = 0.09x at 0.53x bytes; eager PROBE 763 us"),
    "bnb-int8": dict(bw={"compiled": 0.117, "eager": 0.117}, compute=0.12, graphs=False,
                     src="PROBE: LLM.int8 116.8 us eager; fails CUDA graph capture; compute: PREFILL (one row)"),
    "bnb-nf4": dict(bw={"compiled": 0.26, "eager": 0.26}, compute=0.40,
                    src="PROBE: nf4 29.2 us graph / 30.0 eager at 1 row (FUSED rows give 0.255); above 1 row "
                        "dequantize + bf16 GEMM"),
    "awq-int4": dict(bw={"compiled": 0.49, "eager": 0.23}, compute=0.032, layer_ms={"compiled": 0.005},
                     src="compiled: FUSED (8B 3.49-3.66 ms, 70B 21.8 ms at batch 1: within 2%); eager PROBE: torchao "
                         "int4 tile_packed_to_4d g128 31.1 us at 1 row; compute: PREFILL (that kernel prefills at "
                         "~2k tokens/s: no dequantize-to-GEMM path for large M)"),
    "gptq-int4": dict(bw={"compiled": 0.49, "eager": 0.23}, compute=0.032, layer_ms={"compiled": 0.005},
                      src="FUSED, PROBE, PREFILL (same int4 g128 kernel as awq-int4 in the measured stack)"),
}
# 2:4 semi-structured (cuSPARSELt), bf16, needs >= 16 rows: 76.5 us graph / 308 us eager at 16 rows
# against a 15.4 us floor for its 1.125 bytes per weight.
# Compiled: FUSED over all 8 llama3.1-8b 2:4-magnitude rows (batch 1-64; 14.3-32 ms per step): 0.12.
# The time grows with the batch (cuSPARSELt is no faster than its padding to 16 rows suggests): +19% at
# batch 1, -33% at batch 64 with one constant. Uncompiled layers in a graph (regional-graph-nocompile) 0.10.
# Above 16 rows its compiled time grows: batch 64 takes 1.76-1.82x batch 16 (same rows), +0.016 per row.
SPARSE_24 = dict(bw={"compiled": 0.12, "eager": 0.05}, compute_speedup=1.0, row_factor=0.016,
                 src="compiled: FUSED 2:4 rows; eager PROBE: 2:4 bf16 308 us at 16 rows; dense-speed prefill "
                     "assumed (no speedup measured)")

# Methods that dequantize to 16 bit and run a 16-bit GEMM above a few rows (bnb-nf4): the dequantized
# weights are written and read by separate kernels, not streamed by a GEMV: the PROBE cuBLAS fraction
# (0.84), not FUSED's; with 1.04 the 8B nf4 rows at batch 4-64 came out 18% too fast (median).
DEQUANT_PATH_BW = {"compiled": 0.84, "eager": 0.82}
# compiled: fixed per-step cost of the small kernels (norms, rotary, KV write, attention at small context,
# sampling) per layer, added to the GPU time: 0.044 with the bf16 compiled fraction 1.04, both from FUSED
# (two unknowns, two model sizes). (The unmerged regional-graph rows gave 0.028-0.041 ms per layer at a
# 0.84 fraction on six models, H100 and H200.)
# eager: the host issues every kernel from Python, so a step takes max(GPU time, host time); host time
# per layer measured in measurement/data/measurements.csv (20 eager bf16 rows, H100 and H200 VMs,
# six models from 1B to 8B): 0.46-0.62 ms per layer, independent of model size; 0.55 is the median.
STEP_OVERHEAD_MS_PER_LAYER = {"compiled": 0.044, "eager": 0.55}
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
STEP_OVERHEAD_SRC = ("compiled: regional-graph-fused rows, eager: measured host time per layer; both in "
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
