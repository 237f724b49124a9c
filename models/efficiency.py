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

# Fixed per-step cost of the small kernels (norms, rotary, attention launch, sampling), per layer.
# compiled: 6.35 ms/step measured for bf16 Llama-3.1-8B batch 1 (gpu-notes) minus 32 projections
# sets at the probe's rate (~4.45 ms) = ~1.9 ms over 32 layers. eager: 37.7 ms/step over 32 layers,
# host-bound on that VM (one CPU core at 100%).
STEP_OVERHEAD_MS_PER_LAYER = {"compiled": 0.06, "eager": 1.18}
STEP_OVERHEAD_SRC = "gpu-notes 2026-11-21: H200 Llama-3.1-8B bf16 batch 1, 6.35 ms/step graphs, 37.7 ms/step eager"

# Relative error carried on a speed prediction: probe GPU (H200/H100) vs other GPUs.
REL_ERR_SAME_ARCH = 0.25
REL_ERR_OTHER_ARCH = 0.45


def kernel(precision: str) -> dict:
    return _KERNELS[precision]


def bw_fraction(precision: str, backend: str) -> float:
    return _KERNELS[precision]["bw"][backend]


def uses_graphs(precision: str, backend: str) -> bool:
    return backend == "compiled" and _KERNELS[precision].get("graphs", True)
