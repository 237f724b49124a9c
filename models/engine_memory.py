"""Engine memory: how many GB per GPU a serving engine fills and how many KV tokens and requests that leaves
(the facts are engines.yaml's ``memory_fraction``, ``memory_fraction_of`` and ``runtime_gb_per_gpu``; the bytes of
weights and KV per token are :func:`models.engine_speed.work`'s)."""
from __future__ import annotations

import math

from .engine_speed import Query


def usable_gb(q: Query, mem_gb: float, fraction: float) -> float:
    """GB per GPU the engine fills (weights, runtime and KV blocks): ``fraction`` of the card (vLLM, SGLang), or
    the weights and runtime plus ``fraction`` of what they leave free (TensorRT-LLM's free_gpu_memory_fraction;
    engines.yaml memory_fraction_of)."""
    if not q.fraction_of_free:
        return mem_gb * fraction
    fixed = q.w.weights_gb / q.n + q.runtime_gb_per_gpu
    return min(mem_gb, fixed + fraction * max(0.0, mem_gb - fixed))  # weights beyond the card: the card, no more


def memory_rule(q: Query, mem_gb: float, fraction: float) -> str:
    """:func:`usable_gb`'s rule in words."""
    if q.fraction_of_free:
        return f"{q.engine} fills {fraction:.0%} of what weights and runtime leave of {mem_gb:g} GB with KV blocks"
    return f"{q.engine} uses {fraction:.0%} of {mem_gb:g} GB (weights, runtime and KV blocks)"


def kv_capacity_tokens(q: Query, mem_gb: float, fraction: float) -> float:
    """Tokens of KV cache that fit beside the weights and the runtime at the engine's memory fraction."""
    per_gpu = usable_gb(q, mem_gb, fraction) - q.w.weights_gb / q.n - q.runtime_gb_per_gpu
    return max(0.0, per_gpu * 1e9 * q.n / q.w.kv_bytes_per_token)


def serving_batch(q: Query, mem_gb: float, fraction: float, prompt: float, gen: float,
                  concurrency: float | None) -> float:
    """Concurrency a benchmark ran at, or (where the engine picked it) the KV capacity in requests,
    capped at the engine's batch limit."""
    if concurrency:
        return float(concurrency)
    cap = kv_capacity_tokens(q, mem_gb, fraction) / (prompt + gen)
    return float(max(1.0, min(q.max_batch_seqs, math.floor(cap))))
