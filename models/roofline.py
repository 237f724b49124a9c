"""Bytes and FLOPs per step of a decoder-only LLM, and the roofline time they imply.

A decode step reads every kept weight once (plus the KV cache of each sequence) and does
2 FLOPs per weight per sequence plus attention (4 x context x head_dim per head per layer).
A prefill step does 2 FLOPs per weight per prompt token plus causal attention
(2 x prompt^2 x head_dim per head per layer). The roofline time is the larger of bytes over
datasheet bandwidth and FLOPs over the datasheet dense peak: no real run can beat it.
"""
from __future__ import annotations

from dataclasses import dataclass

from profiles import GPU, LLM, Catalog, load
from profiles.dtypes import BF16, FP16, dtype16

from .candidate import Candidate, Scenario
from .memory import kv_bytes_per_token, kv_tokens, linear_bytes_per_weight, param_counts


def compute_dtype(precision: str, gpu: GPU) -> str:
    """Tensor dtype that does the matmuls of ``precision`` (its ``matmul_dtype`` in methods.yaml); weight-only
    formats compute in 16 bit: bf16 where the GPU has it, else fp16."""
    m = load().methods.get(precision)
    return (m.get("matmul_dtype") if m else None) or dtype16(gpu)


def peak_flops(gpu: GPU, dtype: str) -> float:
    """Dense peak in FLOP/s for ``dtype``, falling back to fp16 where the entry is missing."""
    for d in (dtype, FP16, BF16):
        v = gpu.peak_tflops(d)
        if v:
            return v * 1e12
    if gpu.raw.get("fp32_tflops"):
        return float(gpu.raw["fp32_tflops"]) * 1e12
    raise ValueError(f"{gpu.id}: no tensor peak recorded")


@dataclass(frozen=True)
class StepCost:
    """Work of one step. ``linear_bytes``: projection weights; ``other_bytes``: 16-bit lm_head,
    norms, KV reads. FLOPs split the same way (attention in ``other_flops``)."""

    linear_bytes: float
    other_bytes: float
    linear_flops: float
    other_flops: float
    kv_bytes: float = 0.0

    @property
    def bytes(self) -> float:
        return self.linear_bytes + self.other_bytes

    @property
    def flops(self) -> float:
        return self.linear_flops + self.other_flops


def decode_step(cat: Catalog, llm: LLM, cand: Candidate, sc: Scenario) -> StepCost:
    """One decode step for the whole batch, at the mean KV length over the generation."""
    pc = param_counts(llm, cand.dropped_layers)
    lin_b = pc.linear * linear_bytes_per_weight(cat, cand)
    head_b = 2.0 * (pc.lm_head or pc.embed) + 2.0 * pc.bias_norm
    l_kv = kv_tokens(cand, sc.prompt_len + sc.gen_len // 2)
    kv_b = sc.batch * l_kv * kv_bytes_per_token(cat, llm, cand)
    attn_f = 4.0 * sc.batch * l_kv * pc.layers * llm.num_attention_heads * llm.head_dim
    return StepCost(lin_b, head_b + kv_b, 2.0 * sc.batch * pc.linear,
                    2.0 * sc.batch * (pc.lm_head or pc.embed) + attn_f, kv_b)


def prefill_step(cat: Catalog, llm: LLM, cand: Candidate, sc: Scenario) -> StepCost:
    """The whole prompt of every sequence; logits for the last position only."""
    pc = param_counts(llm, cand.dropped_layers)
    tokens = sc.batch * sc.prompt_len
    lin_b = pc.linear * linear_bytes_per_weight(cat, cand)
    kv_write = tokens * kv_bytes_per_token(cat, llm, cand)
    head_b = 2.0 * (pc.lm_head or pc.embed) + 2.0 * pc.bias_norm
    attn_f = 2.0 * sc.batch * sc.prompt_len ** 2 * pc.layers * llm.num_attention_heads * llm.head_dim
    return StepCost(lin_b, head_b + kv_write, 2.0 * tokens * pc.linear,
                    2.0 * sc.batch * (pc.lm_head or pc.embed) + attn_f, kv_write)


def roofline_s(step: StepCost, gpu: GPU, dtype: str, num_gpus: int = 1) -> float:
    """Seconds the step needs at datasheet bandwidth and peak: a floor for any prediction."""
    bw = gpu.mem_bw_gbps * 1e9 * num_gpus
    return max(step.bytes / bw, step.flops / (peak_flops(gpu, dtype) * num_gpus))
