"""Memory cost model: weights per format, KV cache (GQA-aware), activation workspace, runtime overhead.

All sizes in bytes unless a name says ``_gb`` (10^9 bytes, the unit GPU datasheets use).
Formats come from ``profiles/data/methods.yaml`` (bytes per weight incl. scales and sparse metadata).
"""
from __future__ import annotations

from dataclasses import dataclass

from profiles import LLM, Catalog, load

from .candidate import DEFAULT_KV, Candidate, Scenario
from .estimate import Estimate

GB = 1e9
# CUDA context + cuBLAS/cuDNN workspaces + allocator slack that torch's counters do not show.
# Assumption (order of magnitude of the CUDA context on recent drivers), refit from measured
# rows by ``advisor fit``; carried with a wide interval.
RUNTIME_OVERHEAD_GB = 0.6
# Tokens per prefill forward (batch x chunk), both backends, as the harness measures them
# (measurement/backends.py PREFILL_CHUNK_TOKENS; vLLM's chunked-prefill budget is of the same order).
# Prompt-selection KV policies (methods.yaml whole_prompt_prefill) score the whole prompt, so their prefill is one
# forward of every prompt token. A plain transformers generate() call also prefills in one forward:
# it needs more workspace than predicted here for long prompts at large batch.
PREFILL_CHUNK_TOKENS = 16384
UNCHUNKED_KV = tuple(m.id for m in load().methods_of("kv") if m.get("whole_prompt_prefill"))


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model (dropped layers removed)."""

    linear: int          # quantizable projection weights in the decoder layers
    linear_rows: int     # output rows of those projections (for per-row scales)
    bias_norm: int       # biases and norm weights (kept in 16 bit)
    embed: int           # input embedding
    lm_head: int         # output projection (0 if tied to the embedding)
    layers: int

    @property
    def total(self) -> int:
        return self.linear + self.bias_norm + self.embed + self.lm_head


def param_counts(llm: LLM, dropped_layers: int = 0) -> ParamCounts:
    h, hd, nh, nkv, i = llm.hidden_size, llm.head_dim, llm.num_attention_heads, llm.num_key_value_heads, llm.intermediate_size
    layers = llm.num_hidden_layers - dropped_layers
    per_layer = h * nh * hd + 2 * h * nkv * hd + nh * hd * h + 3 * h * i
    rows = nh * hd + 2 * nkv * hd + h + 2 * i + h
    bias = (nh * hd + 2 * nkv * hd) if llm.attention_bias else 0
    embed = llm.vocab_size * h
    lm_head = 0 if llm.tie_word_embeddings else llm.vocab_size * h
    return ParamCounts(per_layer * layers, rows * layers, (bias + 2 * h) * layers + h, embed, lm_head, layers)


def linear_bytes_per_weight(cat: Catalog, cand: Candidate) -> float:
    """Average stored bytes per projection weight for this precision and sparsity."""
    prec = cat.methods[cand.precision]
    bpw = float(prec.get("bytes_per_weight"))
    sp = cat.methods[cand.sparsity_method]
    density = float(sp.get("density", 1.0))
    meta_bits = float(sp.get("metadata_bits_per_weight", 0))
    return bpw * density + meta_bits / 8


def weights_bytes(cat: Catalog, llm: LLM, cand: Candidate) -> float:
    pc = param_counts(llm, cand.dropped_layers)
    prec = cat.methods[cand.precision]
    row_scale = float(prec.get("row_scale_bytes", 0) or 0)
    linear = pc.linear * linear_bytes_per_weight(cat, cand) + pc.linear_rows * row_scale
    return linear + 2.0 * (pc.bias_norm + pc.embed + pc.lm_head)


def kv_bytes_per_token(cat: Catalog, llm: LLM, cand: Candidate) -> float:
    """K and V for one token in every kept layer, in the KV policy's format."""
    layers = llm.num_hidden_layers - cand.dropped_layers
    elem = float(cat.methods[cand.kv].get("bytes_per_kv_elem"))
    return 2 * layers * llm.num_key_value_heads * llm.head_dim * elem


def kv_tokens(cand: Candidate, context: int) -> int:
    """Tokens held per sequence: the whole context, or the eviction budget."""
    return min(context, cand.kv_budget) if cand.kv_budget else context


def kv_bytes(cat: Catalog, llm: LLM, cand: Candidate, sc: Scenario) -> float:
    per_tok = kv_bytes_per_token(cat, llm, cand)
    steady = per_tok * kv_tokens(cand, sc.context) * sc.batch
    if cand.kv_budget and sc.prompt_len > cand.kv_budget:
        # Prompt-selection policies compress after each layer's prefill: one layer holds the
        # full prompt's KV at the moment of selection.
        layers = llm.num_hidden_layers - cand.dropped_layers
        steady += per_tok / layers * sc.prompt_len * sc.batch
    return steady


def activation_bytes(llm: LLM, sc: Scenario, kv: str = DEFAULT_KV) -> float:
    """Prefill workspace: hidden states, q/k/v and the MLP intermediates of one chunk (16 bit).

    Attention itself is assumed to run in a fused (flash/SDPA) kernel, O(tokens) memory.
    """
    tokens = sc.batch * sc.prompt_len
    if kv not in UNCHUNKED_KV:
        tokens = min(tokens, max(PREFILL_CHUNK_TOKENS, sc.batch * 64))
    h, i = llm.hidden_size, llm.intermediate_size
    qkv = (llm.num_attention_heads + 2 * llm.num_key_value_heads) * llm.head_dim
    per_token = 2 * (4 * h + 3 * i + qkv)
    logits = sc.batch * llm.vocab_size * 4  # last position only, fp32
    return tokens * per_token + logits


@dataclass(frozen=True)
class MemoryBreakdown:
    weights_gb: float
    kv_gb: float
    activations_gb: float
    overhead_gb: float
    per_gpu_gb: Estimate

    def as_dict(self) -> dict:
        return {"weights_gb": self.weights_gb, "kv_gb": self.kv_gb, "activations_gb": self.activations_gb,
                "overhead_gb": self.overhead_gb, "per_gpu_gb": self.per_gpu_gb.as_dict()}


def predict_memory(cat: Catalog, llm: LLM, cand: Candidate, sc: Scenario) -> MemoryBreakdown:
    """Peak memory per GPU. Weights, KV and activations split evenly over tensor-parallel GPUs."""
    n = sc.num_gpus
    w = weights_bytes(cat, llm, cand) / GB
    kv = kv_bytes(cat, llm, cand, sc) / GB
    act = activation_bytes(llm, sc, cand.kv) / GB
    per_gpu = (w + kv + act) / n + RUNTIME_OVERHEAD_GB
    # Interval: weights and KV are exact counts; workspace and overhead are assumptions
    # (+-50% of their part); allocator fragmentation can add up to 5% of the total.
    soft = act / n + RUNTIME_OVERHEAD_GB
    low = per_gpu - 0.5 * soft
    high = per_gpu + 0.5 * soft + 0.05 * per_gpu
    est = Estimate(per_gpu, low, high, "GB", "analytical",
                   "weights + KV (exact byte counts) + prefill workspace + runtime overhead (assumption)")
    return MemoryBreakdown(w, kv, act, RUNTIME_OVERHEAD_GB, est)
