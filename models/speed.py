"""Speed cost model: decode tokens/s and prefill latency from the roofline and efficiency factors.

time = max(bytes / (copy bandwidth x kernel fraction), FLOPs / (peak x matmul fraction))
       + per-step small-kernel overhead + tensor-parallel all-reduces.
Every factor is in :mod:`models.efficiency` with its source. A prediction never beats
:func:`models.roofline.roofline_s` (tested on every GPU profile).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from profiles import GPU, LLM, Catalog
from profiles.dtypes import BF16, FP16

from . import efficiency as eff
from .candidate import DEFAULT_PRECISION, Candidate, Scenario
from .estimate import Estimate
from .memory import PREFILL_CHUNK_TOKENS, param_counts
from .roofline import StepCost, compute_dtype, decode_step, peak_flops, prefill_step, roofline_s

DEFAULT_LINK_GBPS = 25.0  # PCIe 4.0 x16 practical, when a profile lacks interconnect figures


def _allreduce_constants() -> tuple[float, float]:
    """(latency s per all-reduce, achieved fraction of the datasheet per-direction link bandwidth), fitted
    on the all-reduce rows measured on 2 H200s over NVLink (models/data/allreduce.json, written by
    ``python -m models.tp_model``). Applying that fraction to PCIe and other NVLink generations is an
    assumption: no all-reduce was measured there."""
    import json
    from pathlib import Path
    d = json.loads((Path(__file__).resolve().parent / "data" / "allreduce.json").read_text())
    return float(d["alpha_s"]), float(d["link_efficiency"])


ALLREDUCE_LATENCY_S, LINK_EFFICIENCY = _allreduce_constants()


@dataclass
class SpeedPrediction:
    decode_step_ms: Estimate
    decode_tok_s: Estimate        # all sequences of the batch together
    per_seq_tok_s: Estimate       # what one user sees
    prefill_ms: Estimate
    roofline_decode_ms: float
    roofline_prefill_ms: float
    utilisation: float            # decode roofline time / predicted time
    notes: list[str] = field(default_factory=list)
    memory_floor_ms: float = 0.0  # decode step's bytes / datasheet bandwidth (per GPU)
    compute_floor_ms: float = 0.0  # decode step's FLOPs / datasheet dense peak of its dtype (per GPU)
    kv_floor_ms: float = 0.0  # the part of memory_floor_ms that reads the KV cache (per GPU)
    request_ms: float = 0.0  # per request outside the GPU's forwards (a serving engine's req_ms): TTFT adds it


def link_bytes_per_s(gpu: GPU) -> float:
    """Achieved per-direction link bandwidth of a ring all-reduce: the profiles quote bidirectional totals
    (PCIe x16, NVLink), halved, times the measured LINK_EFFICIENCY."""
    g = gpu.interconnect.get("gpu_to_gpu_gbps")
    return (float(g) / 2 if g else DEFAULT_LINK_GBPS) * 1e9 * LINK_EFFICIENCY


def _allreduce_s(gpu: GPU, llm: LLM, layers: int, tokens: int, n: int) -> float:
    if n <= 1:
        return 0.0
    msg = tokens * llm.hidden_size * 2
    return 2 * layers * (ALLREDUCE_LATENCY_S + 2 * (n - 1) / n * msg / link_bytes_per_s(gpu))


def _eager_host_factor(cand: Candidate, c: dict) -> float:
    """Host time of an eager forward relative to bf16's, for this method (constants ``c``: models.efficiency)."""
    f = c["eager_host_factor"].get(cand.precision, 1.0)
    return f * c["eager_host_factor_24"] if cand.sparsity.startswith("2:4") else f


def _step_overhead_ms(backend: str, c: dict) -> float:
    """Per-layer ms of a step's small kernels (compiled) or of its host issue (eager: constants ``c``)."""
    return c["eager_host_ms_per_layer"] if backend == "eager" else c["compiled_step_ms_per_layer"]


def _decode_time_s(cat: Catalog, gpu: GPU, llm: LLM, cand: Candidate, sc: Scenario, step: StepCost,
                   notes: list[str], c: dict) -> float:
    n = sc.num_gpus
    prec = cat.methods[cand.precision]
    copy_bw = gpu.mem_bw_gbps * 1e9 * eff.COPY_BW_FRACTION * n
    kern = prec.get("kernels") or {}
    backend = sc.backend
    if not eff.uses_graphs(cand.precision, backend) and backend == "compiled":
        notes.append(f"{cand.precision} kernels cannot be captured in CUDA graphs: eager per-step overhead applies")
        backend_overhead = "eager"
    else:
        backend_overhead = backend
    lin_bytes, frac = step.linear_bytes, eff.bw_fraction(cand.precision, backend, c)
    rows = sc.batch
    row_factor = 1.0
    if cand.sparsity.startswith("2:4"):
        frac = eff.sparse24_bw(backend, c)
        if rows < 16:
            notes.append(f"2:4 kernels need >= 16 rows: batch {rows} is padded to 16")
        elif backend == "compiled":
            row_factor = 1.0 + c["sparse24"]["row_factor"] * (rows - 16)
    gemv_rows = kern.get("gemv_max_rows")
    batch_cost = kern.get("compiled_batch_cost") if backend == "compiled" and rows > 1 else None
    if batch_cost == "row_factor":
        row_factor = 1.0 + c["int4_compiled_row_factor"] * (rows - 1)
        notes.append(f"{cand.precision} compiled: the int4 g128 kernel's time grows with the batch (measured)")
    elif gemv_rows is not None and rows > gemv_rows:
        pc = param_counts(llm, cand.dropped_layers)
        lin_bytes += pc.linear * float(kern.get("dequant_bytes_per_weight", 4.0))
        frac = eff.DEQUANT_PATH_BW[backend]
        notes.append(f"{cand.precision}: batch > {gemv_rows} row(s) takes the dequantize + 16-bit GEMM path")
    t_rows = 0.0
    if batch_cost == "weight_reread":
        pc = param_counts(llm, cand.dropped_layers)
        t_rows = pc.linear * rows * c["int8wo_compiled_bytes_per_weight_per_row"] / copy_bw
        notes.append(f"{cand.precision} compiled at batch > 1: torchao's int8 weight-only matmul under inductor "
                     "re-reads the weights per row (measured ~16 ms per row for an 8B model on the H200)")
    dtype = compute_dtype(cand.precision, gpu)
    peak = peak_flops(gpu, dtype) * eff.MATMUL_FRACTION * n
    rows_eff = max(rows, 16) if cand.sparsity.startswith("2:4") else rows
    t_lin = max(row_factor * lin_bytes / (copy_bw * frac), step.linear_flops * rows_eff / rows / peak) + t_rows
    layers = llm.num_hidden_layers - cand.dropped_layers
    kv_extra = 0.0
    kvq_host = 0.0
    if cat.methods[cand.kv].get("kv_dequant"):
        kv_elems = step.kv_bytes / float(cat.methods[cand.kv].get("bytes_per_kv_elem"))
        kv_extra = kv_elems * c["kv_dequant_bytes_per_elem"]
        kvq_host = c["kvq_host_ms_per_layer"][cand.kv] * 1e-3 * layers
    kv_frac = c["kv_read_fraction"][backend]
    t_kv = step.kv_bytes / (copy_bw * kv_frac)
    # the 16-bit parts (lm_head, norms, attention) run at the reference precision's kernels
    t_other = max((step.other_bytes - step.kv_bytes) / (copy_bw * eff.bw_fraction(DEFAULT_PRECISION, backend, c)) + t_kv,
                  step.other_flops / (peak_flops(gpu, FP16 if dtype == FP16 else BF16) * eff.MATMUL_FRACTION * n))
    overhead = _step_overhead_ms(backend_overhead, c) * 1e-3 * layers
    overhead += eff.layer_ms(cand.precision, backend_overhead, c) * 1e-3 * layers
    if backend_overhead == "eager":
        overhead *= _eager_host_factor(cand, c)
    gpu_time = t_lin + t_other
    # Graph replay adds the small kernels to the GPU time; eager issue from Python overlaps with it.
    step = max(gpu_time, overhead) if backend_overhead == "eager" else gpu_time + overhead
    # the quantized caches' dequantization runs after the step's own work (measured additive, eager)
    step += kvq_host + kv_extra / copy_bw
    return step + _allreduce_s(gpu, llm, layers, sc.batch, n)


def _prefill_time_s(cat: Catalog, gpu: GPU, llm: LLM, cand: Candidate, sc: Scenario, step: StepCost,
                    c: dict) -> float:
    n = sc.num_gpus
    dtype = compute_dtype(cand.precision, gpu)
    peak = peak_flops(gpu, dtype) * eff.compute_fraction(cand.precision, c) * n  # fraction of the dtype's dense peak
    peak16 = peak_flops(gpu, FP16 if dtype == FP16 else BF16) * eff.MATMUL_FRACTION * n
    bw = gpu.mem_bw_gbps * 1e9 * eff.COPY_BW_FRACTION * eff.bw_fraction(DEFAULT_PRECISION, "compiled", c) * n
    t = max(step.linear_bytes / bw, step.linear_flops / peak) + max(step.other_bytes / bw, step.other_flops / peak16)
    layers = llm.num_hidden_layers - cand.dropped_layers
    # Prefill runs as one eager forward per chunk in both measured backends (graphs serve decode only,
    # as in vLLM): the host issues its kernels, with the method's host factor, overlapping the GPU work.
    chunks = max(1, -(-sc.batch * sc.prompt_len // PREFILL_CHUNK_TOKENS))
    host = c["eager_host_ms_per_layer"] * 1e-3 * layers * chunks * _eager_host_factor(cand, c)
    t = max(t, host)
    return t + _allreduce_s(gpu, llm, layers, sc.batch * sc.prompt_len, n)


def predict_speed(cat: Catalog, gpu: GPU, llm: LLM, cand: Candidate, sc: Scenario,
                  constants: dict | None = None) -> SpeedPrediction:
    """``constants``: the measured constants (models.efficiency.CONSTANTS' shape), default the shipped ones;
    validation passes the ones fitted on a fold's training rows (models/harness_fit.py)."""
    c = eff.CONSTANTS if constants is None else constants
    notes: list[str] = []
    dstep = decode_step(cat, llm, cand, sc)
    pstep = prefill_step(cat, llm, cand, sc)
    dtype = compute_dtype(cand.precision, gpu)
    t_dec = _decode_time_s(cat, gpu, llm, cand, sc, dstep, notes, c)
    t_pre = _prefill_time_s(cat, gpu, llm, cand, sc, pstep, c)
    roof_dec = roofline_s(dstep, gpu, dtype, sc.num_gpus)
    roof_pre = roofline_s(pstep, gpu, dtype, sc.num_gpus)
    # Never beat the roofline (guards the efficiency table against a bad entry).
    t_dec, t_pre = max(t_dec, roof_dec), max(t_pre, roof_pre)
    rel = eff.REL_ERR_SAME_ARCH if gpu.cc == (9, 0) else eff.REL_ERR_OTHER_ARCH
    if sc.backend == "eager":
        rel = max(rel, 0.5)
        notes.append("eager decode is host-bound: the per-step overhead depends on the CPU")
    detail = "roofline x efficiency table (models/efficiency.py)"
    step_ms = Estimate.rel(t_dec * 1e3, rel, "ms", "analytical", detail)
    # The interval never crosses the roofline floor.
    step_ms = Estimate(step_ms.value, max(step_ms.low, roof_dec * 1e3), step_ms.high, "ms", "analytical", detail)
    tok_s = Estimate(sc.batch / (step_ms.value / 1e3), sc.batch / (step_ms.high / 1e3),
                     sc.batch / (step_ms.low / 1e3), "tok/s", "analytical", detail)
    per_seq = tok_s.scale(1 / sc.batch)
    pre = Estimate.rel(t_pre * 1e3, rel, "ms", "analytical", detail)
    pre = Estimate(pre.value, max(pre.low, roof_pre * 1e3), pre.high, "ms", "analytical", detail)
    t_mem = dstep.bytes / (gpu.mem_bw_gbps * 1e9 * sc.num_gpus)
    t_cmp = dstep.flops / (peak_flops(gpu, dtype) * sc.num_gpus)
    t_kv = dstep.kv_bytes / (gpu.mem_bw_gbps * 1e9 * sc.num_gpus)
    return SpeedPrediction(step_ms, tok_s, per_seq, pre, roof_dec * 1e3, roof_pre * 1e3, roof_dec / t_dec, notes,
                           t_mem * 1e3, t_cmp * 1e3, t_kv * 1e3)
