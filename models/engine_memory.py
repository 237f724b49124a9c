"""Engine memory: how many GB per GPU a serving engine fills and how many KV tokens and requests that leaves
(the facts are engines.yaml's ``memory_fraction``, ``memory_fraction_of`` and ``runtime_gb_per_gpu``; the bytes of
weights and KV per token are :func:`models.engine_speed.work`'s). The rule itself is in plain numbers
(:func:`budget_gb`, :func:`fraction_for`, :func:`rule`) so that a query and a finished prediction read the same one."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine_speed import Query


def budget_gb(mem_gb: float, fraction: float, fixed_gb: float, of_free: bool) -> float:
    """GB per GPU the engine fills (weights, runtime and KV blocks): ``fraction`` of the card (vLLM, SGLang), or the
    ``fixed_gb`` of weights and runtime plus ``fraction`` of what they leave free (TensorRT-LLM's
    free_gpu_memory_fraction; engines.yaml memory_fraction_of); never more than the card."""
    if not of_free:
        return mem_gb * fraction
    return min(mem_gb, fixed_gb + fraction * max(0.0, mem_gb - fixed_gb))


def fraction_for(need_gb: float, mem_gb: float, fixed_gb: float, of_free: bool) -> float:
    """The memory fraction, in the engine's own terms, at which :func:`budget_gb` reaches ``need_gb`` (inf where the
    weights and runtime alone exceed the card)."""
    if not of_free:
        return need_gb / mem_gb
    return (need_gb - fixed_gb) / max(mem_gb - fixed_gb, 1e-9) if mem_gb > fixed_gb else math.inf


def rule(engine: str, fraction: float, mem_gb: float, of_free: bool) -> str:
    """:func:`budget_gb`'s rule in words."""
    if of_free:
        return f"{engine} fills {fraction:.0%} of what weights and runtime leave of {mem_gb:g} GB with KV blocks"
    return f"{engine} uses {fraction:.0%} of {mem_gb:g} GB (weights, runtime and KV blocks)"


def fixed_gb(q: Query) -> float:
    """GB per GPU of weights and runtime: what a free-memory fraction is taken after."""
    return q.w.weights_gb / q.n + q.runtime_gb_per_gpu


def usable_gb(q: Query, mem_gb: float, fraction: float) -> float:
    """:func:`budget_gb` of a query."""
    return budget_gb(mem_gb, fraction, fixed_gb(q), q.fraction_of_free)


def memory_rule(q: Query, mem_gb: float, fraction: float) -> str:
    """:func:`rule` of a query."""
    return rule(q.engine, fraction, mem_gb, q.fraction_of_free)


def kv_capacity_tokens(q: Query, mem_gb: float, fraction: float) -> float:
    """Tokens of KV cache that fit beside the weights and the runtime at the engine's memory fraction."""
    per_gpu = usable_gb(q, mem_gb, fraction) - fixed_gb(q)
    return max(0.0, per_gpu * 1e9 * q.n / q.w.kv_bytes_per_token)


def serving_batch(q: Query, mem_gb: float, fraction: float, prompt: float, gen: float,
                  concurrency: float | None) -> float:
    """Concurrency a benchmark ran at, or (where the engine picked it) the KV capacity in requests,
    capped at the engine's batch limit."""
    if concurrency:
        return float(concurrency)
    cap = kv_capacity_tokens(q, mem_gb, fraction) / (prompt + gen)
    return float(max(1.0, min(q.max_batch_seqs, math.floor(cap))))
