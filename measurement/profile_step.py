"""Where one compiled decode step spends its time: variants of the regional-graph step of one model, timed
in one process (ratios in one run), each with a kernel-level profile of one step. A GPU tool, run through
``device``; its JSON goes under ``--out`` (one file per variant, written as soon as it exists).

    python -m measurement.profile_step --model llama3.1-8b --batch 1 --prompt-len 512 --out $OUT/profile

Variants: ``unfused`` (the regional-graph step), ``fused`` (merged q|k|v and gate|up weights), ``fused-cdt``
(plus inductor's coordinate-descent tuning of its Triton kernels), ``fused-autotune`` (plus
``max-autotune-no-cudagraphs``: inductor benchmarks Triton GEMM templates against cuBLAS per shape).
ms/token: median of ``--trials`` runs of ``--tokens`` graph replays, CUDA events. The kernel table
comes from ``torch.profiler`` over replays of the captured graph; kernels are grouped by name pattern.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

GROUPS = [("gemv/gemm (cuBLAS)", r"gemv|gemm|cutlass|sm90|xmma|splitK|Kernel2"),
          ("triton", r"triton"), ("copy/index", r"index|copy|scatter"), ("softmax/reduce", r"softmax|reduce")]


def _group(name: str) -> str:
    for g, pat in GROUPS:
        if re.search(pat, name, re.I):
            return g
    return "other"


def _profile(dec, tok0, prompt_len, steps: int = 4) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    dec.reset(tok0, prompt_len, prompt_len)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            dec.step()
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0
        if t > 0:
            kernels[e.key] = {"us_per_step": t / steps, "calls_per_step": e.count / steps}
    return kernels


def run_variant(name, model, cfg, batch, prompt_len, tokens, trials, out: Path):
    import torch

    from .decode_graph import GraphDecoder, compile_layer

    torch._dynamo.reset()
    ic = torch._inductor.config
    ic.coordinate_descent_tuning = name in ("fused-cdt", "fused-autotune")
    mode = "max-autotune-no-cudagraphs" if name == "fused-autotune" else "default"
    fn = compile_layer(mode)
    from transformers import StaticCache

    with torch.inference_mode():
        cache = StaticCache(config=cfg, max_cache_len=prompt_len + tokens)  # as the harness: prompt + gen
        ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device="cuda")
        tok0 = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        dec = GraphDecoder(model, cache, batch, layer_fn=fn, graph=True, fuse=name != "unfused")
        dec.reset(tok0, prompt_len, prompt_len)
        dec.capture()
        torch.cuda.synchronize()
        capture_s = time.perf_counter() - t0
        ms = []
        for _ in range(trials):
            dec.reset(tok0, prompt_len, prompt_len)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(tokens):
                dec.step()
            b.record()
            torch.cuda.synchronize()
            ms.append(a.elapsed_time(b) / tokens)
        kernels, how = _profile(dec, tok0, prompt_len), "graph replay"
        if not kernels:  # this CUPTI does not see inside graphs: the same step, launched kernel by kernel
            dec.use_graph, how = False, "uncaptured step"
            kernels = _profile(dec, tok0, prompt_len)
            dec.use_graph = True
    groups = {}
    for k, v in kernels.items():
        g = groups.setdefault(_group(k), {"us_per_step": 0.0, "calls_per_step": 0.0})
        g["us_per_step"] += v["us_per_step"]
        g["calls_per_step"] += v["calls_per_step"]
    top = sorted(kernels.items(), key=lambda kv: -kv[1]["us_per_step"])[:25]
    res = {"variant": name, "batch": batch, "prompt_len": prompt_len, "tokens": tokens, "capture_s": round(capture_s, 2),
           "ms_per_token": statistics.median(ms), "profiled": how, "trials_ms": ms, "kernel_us_per_step": sum(
               v["us_per_step"] for v in kernels.values()), "groups": groups,
           "top_kernels": [{"name": k[:160], **v} for k, v in top]}
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama3.1-8b")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--variants", default="unfused,fused,fused-cdt,fused-autotune")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import torch

    from .build import build_model
    from .runner import _tune_compile

    _tune_compile()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, cfg, _ = build_model(a.model, weights="random", device=torch.device("cuda"), dtype=torch.bfloat16)
    print(f"{'variant':<16}{'ms/token':>10}{'kernels us':>12}{'capture s':>11}", flush=True)
    for v in a.variants.split(","):
        try:
            r = run_variant(v, model, cfg, a.batch, a.prompt_len, a.tokens, a.trials, out)
        except Exception as e:  # one failing variant leaves the others
            (out / f"{v}.error.txt").write_text(repr(e))
            print(f"{v:<16} failed: {e!r}"[:300], flush=True)
            continue
        print(f"{v:<16}{r['ms_per_token']:>10.3f}{r['kernel_us_per_step']:>12.0f}{r['capture_s']:>11.1f}", flush=True)
        for g, d in sorted(r["groups"].items(), key=lambda kv: -kv[1]["us_per_step"]):
            print(f"    {g:<22}{d['us_per_step']:>9.0f} us {d['calls_per_step']:>6.0f} calls", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
