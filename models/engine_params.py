"""The engine cost model's parameters (:mod:`models.engine_speed`): each one's prior, which are per engine and which
per kernel, what an earlier build's kernel fits of its own, and the flat set one configuration uses. Fitted values
live in ``models/data/engine_params.json`` (:mod:`models.engine_fit`)."""
from __future__ import annotations

# Parameters of one engine: efficiencies per kernel and fixed costs (see the module docstring).
PARAM_PRIORS = {  # name: (prior value, sigma of log prior, lower, upper)
    # a streaming kernel's share of datasheet bandwidth where nothing else binds: a device-to-device copy reaches
    # 0.86-0.89 on the H200 (copy_bw_gbps 4,138-4,186 of 4,800 in measurement/data/llamacpp/rows.csv; 4.29 TB/s in
    # shared/gpu-notes.md), a bf16 GEMV through cuBLAS 0.75 (gpu-notes, one 4096 x 14336 projection)
    "e_bw": (0.80, 0.5, 0.05, 0.97),
    "e_mm": (0.50, 0.7, 0.02, 0.95),
    "e_pre": (0.50, 0.7, 0.02, 0.95),
    "r_gemm": (0.85, 0.5, 0.2, 1.0),      # weight streaming of the multi-sequence kernel relative to batch 1
    "c_dq": (2.0, 2.0, 0.01, 100.0),      # CUDA-core FLOPs per weight per GEMV row (the FMA, plus dequantization)
    "e_kv": (0.60, 0.6, 0.05, 0.97),
    "e_attn": (0.40, 0.8, 0.02, 0.95),
    "host_ms": (0.3, 0.7, 0.005, 50.0),   # per-step host/launch cost with CUDA graphs: tenths of a ms
    "layer_us": (10.0, 1.5, 0.1, 500.0),
    # bytes per SM per clock cycle a kernel streams weights at: 48 (above the 3-28 that datasheet bandwidth over
    # SMs x boost clock asks of today's GPUs) leaves it bandwidth-bound unless its rows say otherwise; a wide prior
    # (a factor e^3 = 20 per sd): few rows inform it, and on one GPU it trades against e_bw
    "b_sm": (48.0, 3.0, 1.0, 1000.0),
    "seq_us": (0.05, 2.0, 0.0001, 100.0),
    "layer_exp": (0.5, 0.7, 0.01, 2.0),   # the per-layer cost grows as (hidden / 4096) ** layer_exp   # per sequence per layer per step (row-wise small kernels)
    "pre_fix_ms": (5.0, 1.5, 0.05, 500.0),
    "req_ms": (10.0, 1.5, 0.1, 500.0),    # per request outside the forwards (module docstring): an assumption
    "row_sync": (1.0, 1.0, 0.05, 50.0),   # row split: each copy's cost in measured all-reduce latencies
    # a tensor-parallel all-reduce's latency in measured NCCL all-reduce latencies (models/data/allreduce.json)
    "ar_lat": (1.0, 1.0, 0.2, 20.0),
    # per decode step of a server beside an in-process benchmark (HTTP front end, streaming, scheduler loop): an
    # assumption of half a millisecond, fitted where rows name their client (models/engine_design.py _SERVED)
    "serve_ms": (0.5, 1.5, 0.001, 50.0),
}
KERNEL_PARAMS = ("e_bw", "e_mm", "e_pre", "c_dq", "layer_us", "r_gemm", "b_sm")
ENGINE_PARAMS = ("e_kv", "e_attn", "host_ms", "seq_us", "layer_exp", "pre_fix_ms", "req_ms", "row_sync", "ar_lat",
                 "serve_ms")


def prior_params(kernels) -> dict:
    out = {k: PARAM_PRIORS[k][0] for k in ENGINE_PARAMS}
    out["kernels"] = {k: {p: PARAM_PRIORS[p][0] for p in KERNEL_PARAMS} for k in kernels}
    return out


def base_kernel(kernel: str) -> str:
    """Today's kernel id of an earlier build's kernel (``ggml-f16~2405`` -> ``ggml-f16``; engines.yaml
    earlier_builds ``tag``): same dtype and bytes, its own fitted efficiencies."""
    return kernel.split("~", 1)[0]


# What an earlier build's kernel (``<kernel>~<tag>``, engines.yaml earlier_builds) fits of its own: the bytes per
# SM per cycle its weight streaming sustains and its fixed cost per layer. The rest (DRAM efficiency, tensor
# efficiencies, the GEMM's streaming, dequantization cost, and every per-GPU offset) it shares with today's kernel
# of the same method. Why the SMs: the May 2024 build's F16 decode reached 0.85-1.1 TB/s on A100 / H100 PCIe / H200
# (published and measured) but 0.7-0.9 of datasheet bandwidth on GDDR GPUs, as a kernel with too few loads in flight
# per SM does (Little's law); measurement/NOTES.md, calls 28-29.
EARLIER_OWN_PARAMS = ("b_sm", "layer_us")


def own_params(kernel: str) -> tuple:
    """The parameters ``kernel`` fits itself: all of KERNEL_PARAMS for today's kernels, EARLIER_OWN_PARAMS for an
    earlier build's (``<kernel>~<tag>``; the rest are today's kernel's)."""
    return EARLIER_OWN_PARAMS if base_kernel(kernel) != kernel else KERNEL_PARAMS


def kparams(params: dict, kernel: str) -> dict:
    k = params["kernels"].get(kernel) or {}
    base = params["kernels"].get(base_kernel(kernel)) or {}
    own = own_params(kernel)
    return {p: k.get(p, PARAM_PRIORS[p][0]) if p in own else base.get(p, PARAM_PRIORS[p][0]) for p in KERNEL_PARAMS}


def row_params(params: dict, kernel: str, gpu: str | None = None) -> dict:
    """The flat parameter set one configuration uses: the engine's, its kernel's efficiencies, and the
    kernel's offset on this GPU where rows there fitted one (bounded like the efficiency; an earlier build's
    kernel takes today's kernel's offsets)."""
    out = {**{k: params.get(k, PARAM_PRIORS[k][0]) for k in ENGINE_PARAMS}, **kparams(params, kernel)}
    for p, f in (params.get("arch") or {}).get(f"{base_kernel(kernel)}@{gpu}", {}).items():
        out[p] = min(out[p] * f, PARAM_PRIORS[p][3])
    return out
