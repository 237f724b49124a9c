"""One measurement: warm-up, then ``trials`` x (prefill of ``batch x prompt_len`` tokens, decode of
``gen_len`` tokens), each inside an NVML/synchronize window (:class:`Scenario`); the medians and spread
of those trials (:func:`summarize`: ms, ms per token, tokens/s, W, J per token, MHz), the roofline of
the row (:func:`add_roofline`: bytes and FLOPs per step over the machine's peaks, ms) and its quality
flags (:func:`flags_for`).
"""
from __future__ import annotations

import statistics
import time

from .backends import EVICT, _stored, cache_nbytes, prefill_chunk
from .prepare import ModelContext, _cuda
from .store import RunConfig

SPREAD_FLAG_PCT = 3.0
SLOW_DECODE_S = 15.0  # seconds for one warm-up decode of gen_len tokens above which only one trial is timed
PREFILL_REPEAT_TOKENS = 32768  # above this many prompt tokens, prefill once and reuse its KV for every decode trial
SLOW_PREFILL_S = 2.0  # a first prefill slower than this is not repeated either (awq-int4's eager int4 prefill:
                      # ~2k tokens/s, 16 s for 16 x 2048 on the H200, call 13)


def med_spread(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = statistics.median(xs)
    spread = 100.0 * (max(xs) - min(xs)) / m if m else None
    return m, spread


class Scenario:
    """Prefill of ``batch x prompt_len`` then decode of ``gen_len`` tokens. One warm-up (it includes
    torch.compile for a new shape), then ``trials`` timed trials, each inside synchronize + NVML windows.
    Small prefills are repeated per trial; large ones (> PREFILL_REPEAT_TOKENS, or a first prefill slower
    than SLOW_PREFILL_S) run once and every decode trial restarts from their KV (the KV contents do not
    change the work of a decode step); their ``prefill_trials_ms`` then holds one value."""

    def __init__(self, rc: RunConfig):
        self.rc = rc

    def run(self, ctx: ModelContext, backend) -> dict:
        import torch

        rc = self.rc
        dev = ctx.device
        g = torch.Generator().manual_seed(1234)
        ids = torch.randint(0, ctx.config.vocab_size, (rc.batch, rc.prompt_len), generator=g).to(dev)
        if _cuda(dev):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        with torch.inference_mode():  # every cache tensor is created and mutated under inference mode
            return self._run(ctx, backend, ids)

    def _run(self, ctx: ModelContext, backend, ids) -> dict:
        import torch

        rc = self.rc
        dev = ctx.device
        state: dict = {}
        repeat = rc.batch * rc.prompt_len <= PREFILL_REPEAT_TOKENS or not backend.can_reuse(rc)
        t0 = time.perf_counter()
        pre, dec = [], []
        first_pre = backend.prefill(ctx, rc, ids, state)
        if repeat and first_pre.seconds > SLOW_PREFILL_S and backend.can_reuse(rc):
            repeat = False  # a slow prefill is timed once: repeating it would only spend the sweep's time
        if not repeat:
            pre.append(first_pre)
        warm_decode_s = 0.0
        for _ in range(max(1, rc.warmup)):
            t1, cap0 = time.perf_counter(), state.get("capture_s") or 0.0
            backend.decode(ctx, rc, state)
            # compile + capture (done in the first call only) is not decode time
            warm_decode_s = time.perf_counter() - t1 - ((state.get("capture_s") or 0.0) - cap0)
            if backend.can_reuse(rc):
                backend.reset(rc, state)
            else:
                backend.prefill(ctx, rc, ids, state)
        warm_s = time.perf_counter() - t0
        # a pathologically slow config (a decode that alone takes > SLOW_DECODE_S) gets one timed trial, so
        # that it cannot eat a sweep's time budget; n_trials says so
        trials = max(1, rc.trials) if warm_decode_s < SLOW_DECODE_S else 1
        for i in range(trials):
            if repeat:
                pre.append(backend.prefill(ctx, rc, ids, state))
            else:
                backend.reset(rc, state)
            dec.append(backend.decode(ctx, rc, state))
        res = summarize(pre, dec, rc)
        res["warmup_s"] = round(warm_s, 2)
        res["capture_s"] = state.get("capture_s")
        res["prefill_chunk"] = prefill_chunk(rc)
        res["kv_gb"] = cache_nbytes(state.get("cache")) / 1e9
        res["kv_stored_tokens"] = _stored(state.get("cache"))
        res["cache_notes"] = state.get("notes")
        if _cuda(dev):
            res["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
            res["peak_reserved_gb"] = torch.cuda.max_memory_reserved(dev) / 1e9
        c = state.pop("cache", None)
        if c is not None and hasattr(c, "detach"):
            c.detach()
        state.clear()
        return res


def summarize(pre: list, dec: list, rc: RunConfig) -> dict:
    dec_ms = [w.seconds * 1000.0 / max(1, rc.gen_len) for w in dec]
    pre_ms = [w.seconds * 1000.0 for w in pre]
    d_ms, d_sp = med_spread(dec_ms)
    p_ms, p_sp = med_spread(pre_ms)
    avg_pw, _ = med_spread([w.avg_power_w for w in dec])
    e_med, _ = med_spread([w.energy_j for w in dec])
    clk_med, _ = med_spread([w.sm_clock_mhz for w in dec])
    pj_med, _ = med_spread([w.energy_j for w in pre])
    ntok = rc.batch * rc.gen_len
    return {
        "decode_ms_per_token": d_ms,
        "decode_spread_pct": d_sp,
        "decode_tok_s": rc.batch * 1000.0 / d_ms if d_ms else None,
        "prefill_ms": p_ms,
        "prefill_spread_pct": p_sp if len(pre_ms) > 1 else None,
        "prefill_tok_s": rc.batch * rc.prompt_len * 1000.0 / p_ms if p_ms else None,
        "ttft_ms": (p_ms + d_ms) if (p_ms is not None and d_ms is not None) else None,
        "avg_power_w": avg_pw,
        "j_per_token": e_med / ntok if e_med is not None else None,
        "prefill_j": pj_med,
        "sm_clock_mhz": clk_med,
        "decode_trials_ms": [round(x, 4) for x in dec_ms],
        "prefill_trials_ms": [round(x, 3) for x in pre_ms],
        "n_trials": len(dec_ms),
    }


def add_roofline(row: dict, ctx: ModelContext, rc: RunConfig, peaks: dict) -> None:
    from . import roofline as R

    cfg = ctx.config
    ctx_len = rc.prompt_len + (rc.gen_len - 1) / 2.0
    if rc.kv in EVICT and rc.kv_budget:
        ctx_len = min(rc.kv_budget, rc.prompt_len) + (rc.gen_len - 1) / 2.0
    dt = R.matmul_dtype(rc.precision)
    dc = R.decode_cost(cfg, batch=rc.batch, ctx=ctx_len, step_weight_bytes=ctx.step_weight_bytes,
                       matmul_params=ctx.matmul_params, kv=rc.kv)
    pc = R.prefill_cost(cfg, batch=rc.batch, prompt=rc.prompt_len, step_weight_bytes=ctx.step_weight_bytes,
                        matmul_params=ctx.matmul_params)
    rd, bound = R.roofline_ms(dc, peaks, dt)
    rp, pbound = R.roofline_ms(pc, peaks, dt)
    row.update({
        "copy_bw_gbps": peaks.get("copy_bw_gbps"),
        "host_launch_us": peaks.get("host_launch_us"),
        "matmul_tflops_bf16": peaks.get("matmul_tflops_bf16"),
        "matmul_tflops_fp8": peaks.get("matmul_tflops_fp8"),
        "matmul_tflops_int8": peaks.get("matmul_tflops_int8"),
        "matmul_dtype": dt,
        "decode_bytes_per_step": dc.bytes,
        "decode_flops_per_step": dc.flops,
        "roofline_decode_ms": rd,
        "roofline_decode_bound": bound,
        "decode_roofline_frac": (rd / row["decode_ms_per_token"]) if rd and row.get("decode_ms_per_token") else None,
        "prefill_flops": pc.flops,
        "roofline_prefill_ms": rp,
        "roofline_prefill_bound": pbound,
        "prefill_roofline_frac": (rp / row["prefill_ms"]) if rp and row.get("prefill_ms") else None,
    })


def flags_for(row: dict) -> list[str]:
    f = []
    if (row.get("decode_spread_pct") or 0) > SPREAD_FLAG_PCT:
        f.append("decode_spread_gt_3pct")
    if (row.get("prefill_spread_pct") or 0) > SPREAD_FLAG_PCT:
        f.append("prefill_spread_gt_3pct")
    if row.get("status") == "ok" and row.get("n_trials") == 1 and (row.get("trials") or 1) > 1:
        f.append("one_trial_slow_decode")
    for k in ("decode_roofline_frac", "prefill_roofline_frac"):
        v = row.get(k)
        if v is not None and v > 1.0:
            f.append(f"BUG_{k}_gt_1")
    return f
