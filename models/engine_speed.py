"""Engine cost model: decode step, prefill and serving throughput for vLLM, SGLang, TensorRT-LLM and
llama.cpp, from the bytes and FLOPs of each step and the engine's kernel efficiencies.

For a batch of ``B`` sequences at mean context ``L`` on ``n`` GPUs (tensor parallel; a llama.cpp layer
split runs the GPUs one after the other):

    t_weights = W / (n x BW x e_bw[kernel] x (r_gemm if B > 1))   W: bytes of the weights one step reads
                (plus a 16-bit copy written and read where the kernel dequantizes before a GEMM: bitsandbytes)
    t_sm      = W / (n x SMs x clock x b_sm[kernel] x (r_gemm if B > 1))   (a kernel that keeps too few bytes in
                flight per SM is bound by its SMs, not by the DRAM (Little's law): b_sm bytes per SM per cycle,
                fitted; what makes a GEMV reach 0.6 of an H200's datasheet bandwidth but 0.85 of a GDDR card's.
                GPUs the catalog has no SM count or clock for have no such bound)
    t_matmul  = B x F / (n x peak[dtype] x e_mm[kernel])    F: matmul FLOPs per token
    t_linear  = (t_weights^3 + t_sm^3 + t_matmul^3)^(1/3)   (a soft roofline: the GEMMs near the ridge
                                                             reach neither asymptote)
    t_kv      = B x L x kv_bytes_per_token / (n x BW x e_kv)   (decode attention reads the KV cache; without
                flash attention, llama.cpp also writes and re-reads an fp32 score per head and context token)
    t_step    = t_linear + t_kv + host_ms + layers x (layer_us x (hidden/4096)^layer_exp + B x seq_us)
                + allreduce + row_sync   (llama.cpp's row split: every projection's slices are copied to and
                from each GPU and synchronized, ROW_SPLIT_MATMULS x 2 copies x n GPUs per layer, each at the
                measured all-reduce latency times a fitted ``row_sync``)
                + serve_ms where a server runs the step (its HTTP front end, streaming and scheduler loop; a row
                timed in process, by gptSessionBenchmark, trtllm-bench or llama-bench, has none: engine_design)
    A serving engine's TPOT at steady state (``B`` > 1) adds to the step's matmul tokens the prompts of
    the other requests that arrive meanwhile: (B - 1) x ISL / OSL per step (chunked prefill puts them in the
    same forward); llama.cpp's benchmarks time decode alone.

Prefill of ``T`` tokens runs in chunks of the engine's token budget: each chunk reads the weights once
and does 2 FLOPs per weight per token at ``e_pre[kernel]`` of the dtype's peak (the lm_head for each sequence's
last token only: :func:`prompt_flops`), plus causal attention at ``e_attn``, plus a fixed ``pre_fix_ms`` per chunk
(shared among tensor-parallel GPUs). A request's TTFT is its
own prefill, one decode step and ``req_ms``: the work outside the GPU's forwards between a request's arrival and
its first token (HTTP, tokenization, scheduling, detokenization), which only TTFT rows inform (a prior of 10 ms
where none do: an assumption). Serving throughput with ``B`` concurrent requests of ISL + OSL tokens is
``B x OSL / (prefill(B x ISL) + OSL x t_step(B, ISL + OSL / 2))``; when a benchmark lets the engine pick
``B`` it is the KV capacity (memory left after weights, at the engine's memory fraction) capped at the
engine's batch limit.

The efficiencies ``e_*`` and fixed costs are fitted on published and measured engine rows
(:mod:`models.engine_fit`, stored in ``models/data/engine_params.json``); every datasheet figure comes
from ``profiles/data/gpus.yaml``. A prediction never beats the datasheet roofline (``e_bw`` and ``e_kv``
are bounded below 1; tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from profiles import GPU, LLM, Catalog
from profiles.dtypes import BF16, FP8, FP16, INT8
from profiles.engines import Engine, arch_of

from .candidate import Candidate
from .memory import param_counts
from .speed import ALLREDUCE_LATENCY_S, link_bytes_per_s
from .engine_params import (EARLIER_OWN_PARAMS, ENGINE_PARAMS, KERNEL_PARAMS, PARAM_PRIORS,  # noqa: F401 - es.X
                            base_kernel, kparams, own_params, prior_params, row_params)

P_SOFT = 3.0
# Tensor dtype each kernel multiplies in (its peak is the compute roof).
KERNEL_DTYPE = {
    "cublas-16": "16", "trt-16": "16", "marlin-int4": "16", "marlin-fp8-wo": "16", "awq-gemm": "16",
    "exllama-gptq": "16", "bnb": "16", "trt-w4a16": "16", "cutlass-fp8": FP8, "trt-fp8": FP8,
    "cutlass-int8": INT8, "trt-int8-sq": INT8, "trt-nvfp4": "fp4",
    # llama.cpp: F16 through cuBLAS with FP16 accumulation (ggml-cuda's CUBLAS_COMPUTE_16F path), the
    # quantized types through MMQ on int8 tensor cores
    "ggml-f16": "fp16acc", "ggml-q8_0": INT8, "ggml-q6_k": INT8, "ggml-q5_k": INT8, "ggml-q4_k": INT8,
    "ggml-q4_0": INT8, "ggml-iq4_xs": INT8,
}
# Per engine, from engines.yaml (cited there) into each Query: prefill_chunk_tokens (tokens per prefill forward),
# max_batch_seqs (the largest batch it schedules by default), runtime_gb_per_gpu (memory beside weights and KV,
# an assumption), gemv_max_rows (rows a matrix-vector kernel serves before a GEMM takes over, each re-doing the
# dequantization) and prefill_in_decode_steps (other requests' prompts folded into the decode forwards).
# Bytes per weight that a kernel moves beside its packed weights when a step has more than one row:
# bitsandbytes' matmul_4bit (which vLLM's bitsandbytes linear method calls per shard) takes its GEMV only
# for a single row; for more rows (a decode batch, every prefill chunk) it dequantizes the whole matrix to
# 16 bit and runs a dense GEMM on the copy: 2 bytes written + 2 bytes read per weight
# (bitsandbytes/autograd/_functions.py matmul_4bit and MatMul4Bit.forward, commit 012c660;
# vllm/model_executor/layers/quantization/bitsandbytes.py _apply_bnb_4bit).
DEQUANT_COPY_BYTES = {"bnb": 4.0}
# Attention without flash attention (llama.cpp before PR #5021 of 2024-04-30, and with -fa 0 after): the graph
# multiplies K by Q into an fp32 score matrix, soft_max_ext reads and rewrites it, and the V product reads it
# again: 4 passes of 4 bytes per score, one score per head per token per context token (llama.cpp
# src/llama-graph.cpp build_attn_mha, non-flash branch). Flash attention keeps the scores on chip.
NONFUSED_SCORE_BYTES = 16.0
# llama.cpp's row split (--split-mode row) splits the weights of each of a layer's projections across the
# GPUs (q, k, v, o, gate, up, down in the catalog's dense decoders); each one's input is copied to every GPU and
# its output slices back to the main GPU, which waits on them (ggml/src/ggml-cuda/ggml-cuda.cu, split buffers).
ROW_SPLIT_MATMULS = 7


def dtype_peak_flops(gpu: GPU, dtype: str) -> float:
    """Dense tensor peak (FLOP/s) of ``dtype`` ('16' = bf16 where the GPU has it, else fp16), falling back
    to the 16-bit peak, then the FP32 figure, where the catalog has no entry."""
    order = {"16": (BF16, FP16), "fp16acc": ("fp16_acc16", FP16, BF16), FP8: (FP8, BF16, FP16), INT8: (INT8, BF16, FP16),
             "fp4": ("fp4", FP8, BF16, FP16)}[dtype]
    for d in order:
        v = gpu.peak_tflops(d)
        if v:
            return v * 1e12
    v = gpu.raw.get("fp32_tflops")
    if v:
        return float(v) * 1e12
    raise ValueError(f"{gpu.id}: no tensor peak recorded")


def cuda_core_flops(gpu: GPU) -> float:
    """FP32 (non-tensor) FLOP/s: what dequantization and small kernels run on; an eighth of the 16-bit
    tensor peak where the catalog has no FP32 figure."""
    v = gpu.raw.get("fp32_tflops")
    return float(v) * 1e12 if v else dtype_peak_flops(gpu, "16") / 8


@dataclass(frozen=True)
class Work:
    """Per-model, per-method physics of one step (bytes, FLOPs), independent of the GPU."""

    weight_bytes: float        # read by one decode step (all GPUs together)
    weights_gb: float          # held in memory
    flops_per_token: float     # matmul FLOPs per token (projections + lm_head)
    attn_flops_per_ctx: float  # attention FLOPs per token per token of context (4 x layers x heads x hd)
    kv_bytes_per_token: float
    layers: int
    hidden: int
    weights: float = 0.0       # weights one decode step reads (count)
    linear_weights: float = 0.0  # of which in the quantized projections (the lm_head and embeddings excluded)
    score_bytes_per_ctx: float = 0.0  # attention without flash attention: bytes per token per context token
    head_flops: float = 0.0    # of flops_per_token, the lm_head's: a prompt's logits are computed for its last token only


def work(cat: Catalog, llm: LLM, cand: Candidate) -> Work:
    pc = param_counts(llm, cand.dropped_layers)
    prec = cat.methods[cand.precision]
    bpw = float(prec.get("bytes_per_weight"))
    sp = cat.methods[cand.sparsity_method]
    bpw = bpw * float(sp.get("density", 1.0)) + float(sp.get("metadata_bits_per_weight", 0)) / 8
    head_bpw = float(prec.get("head_bytes_per_weight", 2.0))
    head = pc.lm_head or pc.embed
    row_scale = float(prec.get("row_scale_bytes", 0) or 0) * pc.linear_rows
    read = pc.linear * bpw + row_scale + head * head_bpw + 2.0 * pc.bias_norm
    embed_bpw = head_bpw if prec.get("head_bytes_per_weight") else 2.0
    held = pc.linear * bpw + row_scale + pc.embed * embed_bpw + pc.lm_head * head_bpw + 2.0 * pc.bias_norm
    kv_elem = float(cat.methods[cand.kv].get("bytes_per_kv_elem"))
    kvb = 2 * pc.layers * llm.num_key_value_heads * llm.head_dim * kv_elem
    attn = 4.0 * pc.layers * llm.num_attention_heads * llm.head_dim
    scores = NONFUSED_SCORE_BYTES * pc.layers * llm.num_attention_heads
    return Work(read, held / 1e9, 2.0 * (pc.linear + head), attn, kvb, pc.layers, llm.hidden_size,
                float(pc.linear + head), float(pc.linear), float(scores), 2.0 * head)


def _soft(a, b, c=0.0, d=0.0):
    """(a^3 + b^3 + c^3 + d^3)^(1/3): a soft maximum (P_SOFT = 3)."""
    return np.cbrt(a * a * a + b * b * b + c * c * c + d * d * d)


@dataclass(frozen=True)
class Query:
    """One configuration in plain numbers (so that fitting can vectorize over many)."""

    bw: float              # datasheet bytes/s of one GPU
    peak: float            # FLOP/s of the kernel's dtype, one GPU
    peak16: float          # FLOP/s of 16-bit (attention)
    fp32: float            # FLOP/s of the CUDA cores
    link: float            # bytes/s per direction between GPUs
    w: Work
    n: int                 # GPUs
    split: str             # tp | layer | row
    engine: str
    kernel: str
    prefill_chunk_tokens: float  # the engine's facts (engines.yaml)
    gemv_max_rows: float
    runtime_gb_per_gpu: float
    max_batch_seqs: float
    prefill_in_decode_steps: bool
    flash_attn: bool = True  # fused attention (every engine's default today; llama.cpp's -fa auto on CUDA)
    prefill_call_tokens: float = 0.0  # tokens per call into the engine (llama.cpp n_batch); 0: one chunk
    dequant_copy_bytes: float | None = None  # per weight, beside the packed weights (None: DEQUANT_COPY_BYTES)
    sm_cycles: float = 0.0  # SMs x boost clock (cycles/s) of one GPU; 0: not in the catalog (no SM-bound term)
    decode_gemv: bool = True  # batch 1 decodes through a matrix-vector kernel (engines.yaml decode_gemv)
    fraction_of_free: bool = False  # the memory fraction is of what weights and runtime leave (memory_fraction_of)


def query(cat: Catalog, gpu: GPU, llm: LLM, cand: Candidate, eng: Engine, num_gpus: int = 1,
          split: str | None = None, flash_attn: bool = True, kernel: str | None = None,
          dequant_copy_bytes: float | None = None) -> Query:
    """``kernel`` / ``dequant_copy_bytes``: an older build's kernel for the method (engines.yaml earlier_builds)
    instead of the catalog's, with the bytes per weight of the copy it dequantizes to."""
    kernel = kernel or eng.kernel(cand.precision, arch_of(gpu.cc)) or "unknown"
    dtype = KERNEL_DTYPE.get(base_kernel(kernel), "16")
    split = split or eng.default_split if num_gpus > 1 else "none"
    return Query(gpu.mem_bw_gbps * 1e9, dtype_peak_flops(gpu, dtype), dtype_peak_flops(gpu, "16"),
                 cuda_core_flops(gpu), link_bytes_per_s(gpu), work(cat, llm, cand), num_gpus, split, eng.id, kernel,
                 float(eng.get("prefill_chunk_tokens")), float(eng.get("gemv_max_rows")),
                 float(eng.get("runtime_gb_per_gpu")), float(eng.get("max_batch_seqs")),
                 bool(eng.get("prefill_in_decode_steps")), flash_attn, float(eng.get("prefill_call_tokens", 0)),
                 dequant_copy_bytes, sm_cycles_per_s(gpu), bool(eng.get("decode_gemv", True)),
                 eng.get("memory_fraction_of", "total") == "free")


def sm_cycles_per_s(gpu: GPU) -> float:
    """SMs (compute units) x boost clock of one GPU in cycles per second (gpus.yaml sm_count, boost_clock_mhz);
    0 where the catalog lacks either."""
    n, mhz = gpu.raw.get("sm_count"), gpu.raw.get("boost_clock_mhz")
    return float(n) * float(mhz) * 1e6 if n and mhz else 0.0


def arrays(q: Query) -> dict:
    """A query as the plain numbers the vectorized formulas below take (floats or numpy arrays)."""
    tp = q.n > 1 and q.split != "layer"
    row = q.n > 1 and q.split == "row"
    return {"bw": q.bw, "peak": q.peak, "peak16": q.peak16, "fp32": q.fp32, "NW": q.w.weights,
            "link": q.link, "W": q.w.weight_bytes,
            "F": q.w.flops_per_token, "FH": q.w.head_flops, "A": q.w.attn_flops_per_ctx, "KVB": q.w.kv_bytes_per_token,
            "layers": q.w.layers, "hidden": q.w.hidden, "div": float(q.n) if tp else 1.0,
            "n": float(q.n), "tp": 1.0 if tp else 0.0, "chunk": q.prefill_chunk_tokens,
            "call": q.prefill_call_tokens or q.prefill_chunk_tokens,
            "pipe": 1.0 if q.n > 1 and not tp else 0.0, "gemv_rows": q.gemv_max_rows,
            "DQB": q.w.linear_weights * (DEQUANT_COPY_BYTES.get(base_kernel(q.kernel), 0.0) if q.dequant_copy_bytes is None
                                         else q.dequant_copy_bytes),
            "serving": 1.0 if q.prefill_in_decode_steps else 0.0,
            "SB": 0.0 if q.flash_attn else q.w.score_bytes_per_ctx, "smc": q.sm_cycles,
            "gemv": 1.0 if q.decode_gemv else 0.0,
            # a server's step pays its serving loop (serve_ms); a serving engine is asked as served, llama.cpp as its
            # benchmarks run (engine_design reads each published row's own client)
            "served": 1.0 if q.prefill_in_decode_steps else 0.0,
            # a row split leaves attention and the KV cache on the main GPU
            "kvdiv": 1.0 if row else (float(q.n) if tp else 1.0), "row": 1.0 if row else 0.0}


def prompt_flops(a: dict):
    """Matmul FLOPs per prompt token: the projections only. Serving engines compute logits for the last position
    of each prompt alone (vLLM's LogitsProcessor on the sampled indices, SGLang's on the last extend position,
    TensorRT-LLM without gather_context_logits, llama.cpp's last output by default), so the lm_head runs once per
    sequence in a prefill (``batch x FH``), not once per prompt token."""
    return a["F"] - a.get("FH", 0.0)


def allreduce_s(a: dict, tokens, p: dict):
    """Two all-reduces per layer of a tensor-parallel forward: the measured latency (2 H200s over NVLink, NCCL)
    times the engine's fitted ``ar_lat`` (its own all-reduce and the launches and syncs around it), plus the bytes
    over the link."""
    if not np.any(a["tp"]):
        return 0.0
    n = np.maximum(a["n"], 1.0)
    msg = tokens * a["hidden"] * 2
    lat = ALLREDUCE_LATENCY_S * p.get("ar_lat", PARAM_PRIORS["ar_lat"][0])
    return a["tp"] * 2 * a["layers"] * (lat + 2 * (n - 1) / n * msg / a["link"])


def row_sync_s(a: dict, p: dict, forwards=1.0):
    """Synchronization of llama.cpp's row split per forward (0 for any other split)."""
    if not np.any(a.get("row", 0.0)):
        return 0.0
    return (a["row"] * forwards * a["layers"] * ROW_SPLIT_MATMULS * 2 * a["n"] * ALLREDUCE_LATENCY_S
            * p.get("row_sync", PARAM_PRIORS["row_sync"][0]))


def decode_step_s(a: dict, p: dict, batch, ctx, extra_tokens=0.0):
    """Seconds per decode step of ``batch`` sequences at context ``ctx`` (vectorized); ``extra_tokens``:
    prompt tokens of other requests that a continuously batched server folds into the same forward."""
    # one sequence runs a matrix-vector kernel; several run a GEMM that streams the weights less well (an engine
    # whose batch of one runs the same GEMM has no such step)
    rows = np.asarray(batch) > 1
    multi = np.where(rows & (np.asarray(a.get("gemv", 1.0)) > 0), p["r_gemm"], 1.0)
    wb = a["W"] + np.where(rows, a.get("DQB", 0.0), 0.0)
    t_w = wb / (a["div"] * a["bw"] * p["e_bw"] * multi)
    smc = np.asarray(a.get("smc", 0.0), float)
    t_sm = np.where(smc > 0, wb / (a["div"] * np.where(smc > 0, smc, 1.0) * p.get("b_sm", PARAM_PRIORS["b_sm"][0])
                                   * multi), 0.0)
    t_c = (batch * a["F"] + extra_tokens * prompt_flops(a)) / (a["div"] * a["peak"] * p["e_mm"])
    t_dq = a["NW"] * p["c_dq"] * np.minimum(batch, a["gemv_rows"]) / (a["div"] * a["fp32"])
    t_kv = batch * ctx * (a["KVB"] + a.get("SB", 0.0)) / (a.get("kvdiv", a["div"]) * a["bw"] * p["e_kv"])
    width = (a["hidden"] / 4096.0) ** p["layer_exp"]
    fixed = ((p["host_ms"] + a.get("served", 0.0) * p.get("serve_ms", 0.0)) * 1e-3
             + a["layers"] * (p["layer_us"] * width + batch * p["seq_us"]) * 1e-6)
    return _soft(t_w, t_c, t_dq, t_sm) + t_kv + fixed + allreduce_s(a, batch, p) + row_sync_s(a, p)


def prefill_s(a: dict, p: dict, batch, prompt, depth=0.0):
    """Seconds to prefill ``batch x prompt`` tokens after ``depth`` cached ones, in the engine's chunks. A layer
    split pipelines the chunks of one call into the engine through its ``n`` GPUs, each holding 1/n of the
    layers: a call of ``k`` chunks takes (k + n - 1) stage times of 1/n of a chunk, and the pipeline drains
    between calls (llama.cpp pipeline parallelism, PR #6017)."""
    tokens = batch * prompt
    chunks = np.maximum(1.0, np.ceil(tokens / a["chunk"]))
    pipe = a.get("pipe", 0.0) > 0
    div = np.where(pipe, 1.0, a["div"])
    calls = np.minimum(chunks, np.maximum(1.0, np.ceil(tokens / a.get("call", a["chunk"]))))
    stages = np.where(pipe, (chunks + calls * (a["n"] - 1)) / (a["n"] * chunks), 1.0)
    t_w = chunks * (a["W"] + a.get("DQB", 0.0)) / (div * a["bw"] * p["e_bw"])
    t_c = (tokens * prompt_flops(a) + batch * a.get("FH", 0.0)) / (div * a["peak"] * p["e_pre"])
    adiv = np.where(pipe, 1.0, a.get("kvdiv", a["div"]))
    pairs = tokens * (depth + prompt / 2)  # (token, context token) pairs of causal attention
    t_attn = pairs * a["A"] / (adiv * a["peak16"] * p["e_attn"])
    t_scores = pairs * a.get("SB", 0.0) / (adiv * a["bw"] * p["e_kv"])  # no flash attention: the scores' traffic
    t_dq = chunks * a["NW"] * p["c_dq"] / (div * a["fp32"])
    # each forward's fixed cost. Tried 2026-12-02 and not kept: in proportion to the layers and not divided among
    # tensor-parallel GPUs (kernel launches layer by layer on every GPU): SGLang's held-out prefill 35.0 -> 28.6%, but
    # llama.cpp's 10.1 -> 13.2% (918 rows), vLLM's 25.2 -> 25.9%, TensorRT-LLM's decode 11.5 -> 11.7% (leave-one-source-out)
    fix = chunks * p["pre_fix_ms"] * 1e-3 / div
    work = _soft(t_w, t_c, t_dq) + t_attn + t_scores + fix
    return work * stages + allreduce_s(a, tokens, p) + row_sync_s(a, p, chunks)


def roofline_decode_s(a: dict, batch, ctx, extra_tokens=0.0):
    """Datasheet floor of one decode step (with ``extra_tokens`` of other requests' prompts in the same
    forward): no prediction may be faster."""
    return np.maximum(*decode_floors_s(a, batch, ctx, extra_tokens))


def kv_read_floor_s(a: dict, batch, ctx):
    """The KV-cache part of a decode step's memory floor: its bytes / datasheet bandwidth, on each GPU."""
    return batch * ctx * a["KVB"] / (a["div"] * a["bw"])


def decode_floors_s(a: dict, batch, ctx, extra_tokens=0.0):
    """(bytes / datasheet bandwidth, FLOPs / datasheet peak) of one decode step on each GPU."""
    flops = batch * (a["F"] + ctx * a["A"]) + extra_tokens * prompt_flops(a)
    return a["W"] / (a["div"] * a["bw"]) + kv_read_floor_s(a, batch, ctx), flops / (a["div"] * a["peak"])


def roofline_prefill_s(a: dict, batch, prompt):
    tokens = batch * prompt
    return np.maximum(a["W"] / (a["div"] * a["bw"]),
                      (tokens * (prompt_flops(a) + prompt / 2 * a["A"]) + batch * a.get("FH", 0.0))
                      / (a["div"] * np.maximum(a["peak"], a["peak16"])))


METRICS = ("tpot_ms", "decode_tok_s", "prefill_tok_s", "ttft_ms", "output_tok_s", "total_tok_s",
           "request_latency_s", "decode_out_tok_s", "step_ms", "batch_ttft_ms")
METRIC_GROUP = {"tpot_ms": "decode", "decode_tok_s": "decode", "prefill_tok_s": "prefill", "ttft_ms": "prefill",
                "output_tok_s": "throughput", "total_tok_s": "throughput", "request_latency_s": "throughput",
                "decode_out_tok_s": "throughput", "step_ms": "decode", "batch_ttft_ms": "prefill"}


def metric_groups(metric, gen) -> np.ndarray:
    """Each row's group (vectorized): its metric's :data:`METRIC_GROUP`, except that a request latency with at
    most one output token times the prompt's processing alone, so it is a prefill figure."""
    metric, gen = np.asarray(metric), np.asarray(gen, float)
    g = np.array([METRIC_GROUP[m] for m in metric], dtype=object)
    g[(metric == "request_latency_s") & (gen <= 1)] = "prefill"
    return g.astype(str)


def decode_context(prompt, gen, depth=0.0):
    """Mean tokens in context per sequence over the decode steps of a request: what came before, the
    prompt, and half the output (vectorized)."""
    return depth + prompt + np.maximum(gen, 1) / 2


def prompts_per_step(batch, prompt, gen):
    """Prompt tokens per decode step from the other ``batch - 1`` requests of a continuously batching
    server in steady state (each arrives once per ``gen`` steps; vectorized)."""
    return np.maximum(np.asarray(batch, float) - 1, 0) * prompt / np.maximum(gen, 1)


def interleaved_prefill_tokens(a: dict, batch, prompt, gen):
    """:func:`prompts_per_step` for a serving engine's query; 0 for llama.cpp's benchmarks, which time
    decode alone."""
    return a.get("serving", 0.0) * prompts_per_step(batch, prompt, gen)


def metric_values(a: dict, p: dict, metric, batch, prompt, gen, depth, ctx=None):
    """The model's figure for each row's metric (vectorized; ``metric`` an array of METRICS names,
    ``batch`` the concurrency or the serving batch already resolved; ``ctx`` the mean decode context
    where the source lets it be derived, else :func:`decode_context`). ``decode_out_tok_s``: tokens/s of
    all sequences over decode steps only (llama-batched-bench's S_TG). A static batch (every request starts and
    ends together, in process): ``step_ms``, one decode step of the batch with no other prompt in it;
    ``batch_ttft_ms``, the prefill of the whole batch, whose forward gives every first token."""
    metric = np.asarray(metric)
    ctx_dec = decode_context(prompt, gen, depth) if ctx is None else ctx
    t_dec = decode_step_s(a, p, batch, ctx_dec)
    # a serving benchmark's TPOT at steady state: the other requests' prompts, one per output length, are
    # prefilled in the same forwards as the decode (chunked prefill)
    t_tpot = decode_step_s(a, p, batch, ctx_dec, interleaved_prefill_tokens(a, batch, prompt, gen))
    t_pre = prefill_s(a, p, batch, prompt, depth)
    t_pre1 = prefill_s(a, p, 1.0, prompt, depth)
    t_dec_p = decode_step_s(a, p, batch, prompt + depth)
    t_round = t_pre + gen * t_dec
    out = batch * gen / t_round
    return np.select(
        [metric == "tpot_ms", metric == "decode_tok_s", metric == "prefill_tok_s", metric == "ttft_ms",
         metric == "output_tok_s", metric == "total_tok_s", metric == "request_latency_s",
         metric == "decode_out_tok_s", metric == "step_ms", metric == "batch_ttft_ms"],
        [t_tpot * 1e3, 1.0 / t_tpot, batch * prompt / t_pre, (t_pre1 + t_dec_p) * 1e3 + p["req_ms"],
         out, out * (prompt + gen) / np.maximum(gen, 1), t_round, batch / t_dec, t_dec * 1e3, t_pre * 1e3], np.nan)
