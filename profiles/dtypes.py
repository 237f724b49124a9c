"""Tensor dtypes of the GPU catalog: the keys of a GPU's ``tflops_dense`` (profiles/data/gpus.yaml) and
the values of a method's ``matmul_dtype`` (profiles/data/methods.yaml).

Three are spelled like the precision methods that compute in them; here they name the GPU's tensor-core
type, not a method (a method's own type is its ``matmul_dtype``).
"""
from __future__ import annotations

FP16, BF16, FP8 = "fp16", "bf16", "fp8"
INT8 = "int8"
MATMUL_DTYPES = (FP16, BF16, FP8, INT8)


def dtype16(gpu) -> str:
    """The GPU's 16-bit tensor type: bf16 where it has bf16 tensor cores, else fp16."""
    return BF16 if gpu.peak_tflops(BF16) else FP16
