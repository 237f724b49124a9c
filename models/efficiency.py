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
"""
from __future__ import annotations

# Measured copy bandwidth / datasheet: H200 4.29 of 4.8 TB/s (gpu-notes), H100 ~3.0 of 3.35
# (device KINDS.md). Both 0.89-0.90.
COPY_BW_FRACTION = 0.89
# bf16 8192^3 matmul: 788 of 989 TFLOP/s on an H200 (device KINDS.md) = 0.80.
MATMUL_FRACTION = 0.80

# (precision, backend) -> dict(bw=..., compute=..., graphs=bool, src=...)
_KERNELS = {
    "bf16": dict(bw={"compiled": 0.84, "eager": 0.82}, compute=0.80, src="PROBE: 27.4/32.5 us graph, 27.4/33.3 eager"),
    "fp16": dict(bw={"compiled": 0.84, "eager": 0.82}, compute=0.80, src="PROBE (bf16 kernel; same cuBLAS path)"),
    "fp8": dict(bw={"compiled": 0.43, "eager": 0.063}, compute=0.60,
                src="PROBE: fp8 dynamic act+weight 31.6 us graph, 216 us eager (launch-bound); prefill fraction an assumption"),
    "int8-wo": dict(bw={"compiled": 0.71, "eager": 0.071}, compute=0.60,
                    src="TORCHAO: int8wo/bf16 = 1.60x at 0.53x bytes -> 0.85 x bf16's 0.84; eager PROBE 192 us"),
    "w8a8": dict(bw={"compiled": 0.045, "eager": 0.018}, compute=0.60,
                 src="TORCHAO: int8dq/bf16 = 0.09x at 0.53x bytes; eager PROBE 763 us"),
    "bnb-int8": dict(bw={"compiled": 0.117, "eager": 0.117}, compute=0.30, graphs=False,
                     src="PROBE: LLM.int8 116.8 us eager; fails CUDA graph capture; prefill fraction an assumption"),
    "bnb-nf4": dict(bw={"compiled": 0.26, "eager": 0.26}, compute=0.80,
                    src="PROBE: nf4 29.2 us graph / 30.0 eager at 1 row; above 1 row dequantize + bf16 GEMM"),
    "awq-int4": dict(bw={"compiled": 0.39, "eager": 0.23}, compute=0.80,
                     src="PROBE: torchao int4 tile_packed_to_4d g128 18.9 us graph / 31.1 eager at 1 row"),
    "gptq-int4": dict(bw={"compiled": 0.39, "eager": 0.23}, compute=0.80,
                      src="PROBE (same int4 g128 kernel as awq-int4)"),
}
# 2:4 semi-structured (cuSPARSELt), bf16, needs >= 16 rows: 76.5 us graph / 308 us eager at 16 rows
# against a 15.4 us floor for its 1.125 bytes per weight.
SPARSE_24 = dict(bw={"compiled": 0.20, "eager": 0.05}, compute_speedup=1.0,
                 src="PROBE: 2:4 bf16 76.5 us graph at 16 rows; dense-speed prefill assumed (no speedup measured)")

# compiled: fixed per-step cost of the small kernels (norms, rotary, attention launch, sampling) per
# layer, added to the GPU time: 6.35 ms/step measured for bf16 Llama-3.1-8B batch 1 (gpu-notes)
# minus 32 projection sets at the probe's rate (~4.45 ms) = ~1.9 ms over 32 layers.
# eager: the host issues every kernel from Python, so a step takes max(GPU time, host time); host time
# per layer measured in measurement/data/measurements.csv (20 eager bf16 rows, H100 and H200 VMs,
# six models from 1B to 8B): 0.46-0.62 ms per layer, independent of model size; 0.55 is the median.
STEP_OVERHEAD_MS_PER_LAYER = {"compiled": 0.06, "eager": 0.55}
# Eager host time of a method relative to bf16 (more Python-issued kernels per projection), measured
# on the same machine: llama3.1-8b batch 1 prompt 512 on the H100, decode ms/step over bf16's 19.87
# (measurement/data/measurements.csv). gptq-int4 shares awq-int4's int4 kernel path.
EAGER_HOST_FACTOR = {"bf16": 1.0, "fp16": 1.0, "awq-int4": 1.16, "gptq-int4": 1.16, "bnb-nf4": 1.20,
                     "int8-wo": 1.51, "fp8": 4.60, "bnb-int8": 4.48, "w8a8": 1.0}
EAGER_HOST_FACTOR_24 = 9.23  # 2:4 semi-structured: 183.4 ms vs 19.87 (same rows)
# Decode attention over the KV cache as transformers runs it: with a static cache the mask rules out
# the flash kernel and every slot is read (compiled); the dynamic cache path (eager) does better.
# Fraction of the copy bandwidth achieved on the KV bytes, from the batch 16-64 x prompt 4096 rows on
# both GPUs (measured ms minus the weight-read time at the bf16 fraction, over the KV bytes).
KV_READ_FRACTION = {"compiled": 0.10, "eager": 0.30}
# Our quantized caches dequantize the whole cache on every step through a chain of torch ops: bytes
# moved per KV element per step, from the kv-int8/int4/int2/fp8 eager rows at batch 8, prompt 4096
# (about 30 ms over 16-bit on 8 x 4128 tokens x 32 layers x 2048 elements).
KV_DEQUANT_BYTES_PER_ELEM = 40.0
STEP_OVERHEAD_SRC = ("compiled: gpu-notes 2026-11-21 H200 probe (6.35 ms/step); eager: measured host time per layer, "
                     "measurement/data/measurements.csv")

# Relative error carried on a speed prediction: probe GPU (H200/H100) vs other GPUs.
REL_ERR_SAME_ARCH = 0.25
REL_ERR_OTHER_ARCH = 0.45


def kernel(precision: str) -> dict:
    return _KERNELS[precision]


def bw_fraction(precision: str, backend: str) -> float:
    return _KERNELS[precision]["bw"][backend]


def uses_graphs(precision: str, backend: str) -> bool:
    return backend == "compiled" and _KERNELS[precision].get("graphs", True)
