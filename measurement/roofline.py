"""Rooflines measured on the machine itself, and bytes/FLOPs per step for a config.

``machine_peaks()`` measures once per process (and caches to ``$ADVISOR_PEAKS_FILE`` if set, so the
subprocesses of one run share it): device-to-device copy bandwidth (bytes read + written) and dense
matmul rates (bf16; fp8 through ``torch._scaled_mm`` and int8 through ``torch._int_mm`` where they run).

Decode step (one token per sequence, batch B, context C tokens already cached):
    bytes = weight bytes read once (decoder + norms + lm_head; the embedding gathers B rows only)
            + KV bytes read (B x C x kv_bytes_per_token, at the method's storage precision)
    flops = 2 x (matmul params) x B + 4 x B x C x layers x q_heads x head_dim   (QK^T and PV)
Prefill (B x P tokens): flops = 2 x params x B x P + 2 x B x P^2 x layers x q_heads x head_dim (causal)
The roofline time is max(bytes / copy bandwidth, flops / matmul peak of the dtype the matmuls run in).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from profiles.dtypes import BF16

_PEAKS: dict | None = None


def event_times_ms(fn, iters: int = 20, warm: int = 3) -> list[float]:
    """Milliseconds of each of ``iters`` calls of ``fn``, each between CUDA events (a device sync at both
    ends), after ``warm`` untimed calls."""
    import torch

    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return ts


def _bench(fn, iters: int = 20, warm: int = 3) -> float:
    """Median seconds per call (:func:`event_times_ms`)."""
    return statistics.median(event_times_ms(fn, iters, warm)) / 1000.0


def measure_peaks() -> dict:
    import torch

    out = {"copy_bw_gbps": None, "matmul_tflops_bf16": None, "matmul_tflops_fp8": None, "matmul_tflops_int8": None,
           "host_launch_us": None}
    if not torch.cuda.is_available():
        return out
    n = 1 << 30  # 1 GiB of bf16 elements = 2 GiB per buffer
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    t = _bench(lambda: dst.copy_(src), iters=20)
    out["copy_bw_gbps"] = 2 * src.numel() * src.element_size() / t / 1e9
    src = dst = None  # free (rebinding: the timing lambdas closed over them)
    M = 8192
    a = torch.randn(M, M, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(M, M, device="cuda", dtype=torch.bfloat16)
    t = _bench(lambda: a @ b, iters=20)
    out["matmul_tflops_bf16"] = 2 * M ** 3 / t / 1e12
    try:
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.t().contiguous().to(torch.float8_e4m3fn).t()
        one = torch.ones((), device="cuda")
        t = _bench(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), iters=20)
        out["matmul_tflops_fp8"] = 2 * M ** 3 / t / 1e12
    except Exception:
        pass
    try:
        ai = torch.randint(-8, 8, (M, M), device="cuda", dtype=torch.int8)
        bi = torch.randint(-8, 8, (M, M), device="cuda", dtype=torch.int8).t().contiguous().t()
        t = _bench(lambda: torch._int_mm(ai, bi), iters=20)
        out["matmul_tflops_int8"] = 2 * M ** 3 / t / 1e12
    except Exception:
        pass
    torch.cuda.empty_cache()
    try:
        out["host_launch_us"] = host_launch_us("cuda")
    except Exception:
        pass
    return out


def host_launch_us(device: str = "cuda", n: int = 2000, repeats: int = 3) -> float:
    """Host microseconds per tiny op issued back to back from Python: ``n`` in-place adds on a one-element tensor
    between two device synchronizations, median of ``repeats``. The device finishes each add faster than the host
    issues the next, so this times the host (Python, the dispatcher, the launch). An eager decode step issues a
    few thousand such ops and a batch-1 prefill several hundred kernels, and those figures move with the machine a
    device call lands on (measurement/NOTES.md, calls 34-35): each row records it beside the copy bandwidth."""
    import torch

    x = torch.zeros(1, device=device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(min(n, 200)):  # warm the op's dispatch path
        x.add_(1)
    ts = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            x.add_(1)
        sync()
        ts.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(ts)


def machine_peaks() -> dict:
    """Measured once per process; shared through ``ADVISOR_PEAKS_FILE`` between processes of one run."""
    global _PEAKS
    if _PEAKS is not None:
        return _PEAKS
    f = os.environ.get("ADVISOR_PEAKS_FILE")
    if f and Path(f).exists():
        try:
            _PEAKS = json.loads(Path(f).read_text())
            return _PEAKS
        except Exception:
            pass
    _PEAKS = measure_peaks()
    if f:
        try:
            Path(f).write_text(json.dumps(_PEAKS))
        except Exception:
            pass
    return _PEAKS


@dataclass
class StepCost:
    bytes: float
    flops: float
    weight_bytes: float
    kv_bytes: float


def matmul_dtype(precision: str) -> str:
    """The dtype of the measured matmul peak that bounds ``precision``'s matmuls in the harness
    (:func:`measurement.precision.matmul_peak`: the kernel its torchao config calls, else bf16)."""
    from .precision import matmul_peak

    return matmul_peak(precision)


def kv_bytes_per_elem(kv: str) -> float:
    """Bytes per K/V element of the harness's cache for ``kv`` (:func:`measurement.kv_cache.stored_bytes_per_elem`:
    codes plus fp16 scales (and zeros) per group of 64 for a quantized cache, else 2.0)."""
    from .kv_cache import stored_bytes_per_elem

    return stored_bytes_per_elem(kv)


def kv_bytes_per_token(cfg, kv: str | None = None) -> float:
    """Bytes of K and V per token over all layers at the storage precision of ``kv`` (None: the 16-bit cache)."""
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * hd * kv_bytes_per_elem(kv)


def attn_flops_per_token(cfg, ctx: float) -> float:
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 4.0 * ctx * cfg.num_hidden_layers * cfg.num_attention_heads * hd


def decode_cost(cfg, *, batch: int, ctx: float, step_weight_bytes: float, matmul_params: float,
                kv: str | None = None) -> StepCost:
    kvb = batch * ctx * kv_bytes_per_token(cfg, kv)
    flops = 2.0 * matmul_params * batch + batch * attn_flops_per_token(cfg, ctx)
    return StepCost(step_weight_bytes + kvb, flops, step_weight_bytes, kvb)


def prefill_cost(cfg, *, batch: int, prompt: int, step_weight_bytes: float, matmul_params: float) -> StepCost:
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 2.0 * batch * prompt * prompt * cfg.num_hidden_layers * cfg.num_attention_heads * hd
    # logits only for the last position (logits_to_keep=1): lm_head counted once per sequence
    flops = 2.0 * matmul_params * batch * prompt + attn
    kv_write = batch * prompt * kv_bytes_per_token(cfg)
    return StepCost(step_weight_bytes + kv_write, flops, step_weight_bytes, kv_write)


def roofline_ms(cost: StepCost, peaks: dict, dtype: str = BF16) -> tuple[float | None, str | None]:
    bw = peaks.get("copy_bw_gbps")
    pk = peaks.get(f"matmul_tflops_{dtype}") or peaks.get("matmul_tflops_bf16")
    if not bw or not pk:
        return None, None
    t_mem = cost.bytes / (bw * 1e9)
    t_cmp = cost.flops / (pk * 1e12)
    return 1000.0 * max(t_mem, t_cmp), ("memory" if t_mem >= t_cmp else "compute")


def as_dict(c: StepCost) -> dict:
    return asdict(c)
