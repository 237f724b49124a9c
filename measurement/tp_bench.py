"""The tensor-parallel sweep on the GPU machine (issues 12 and 16): one process per GPU under
``torch.distributed.run``, the decoder of :mod:`measurement.tp` captured as one CUDA graph per decode step
(collectives included), NVML energy per GPU, the all-reduce timed alone, rows written by rank 0 to
``<out>/tp_rows.csv`` the moment they exist (``measurement/data/multi_gpu/README.md`` describes the
method and the rows).

    python -m torch.distributed.run --nproc-per-node 2 -m measurement.tp_bench --models llama3.1-8b \
        --precisions bf16 --out $OUT --source-id CALL --commit SHA
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import statistics
import time
from pathlib import Path

from profiles import load
from profiles.dtypes import BF16, FP8

from .tp import COLUMNS, Decoder, Unsupported, _torch, random_shard, shard_plan, to_fp8


def _fp8(precision: str) -> bool:
    """fp8 matmuls (methods.yaml matmul_dtype: e4m3 weights, torch._scaled_mm), else the 16-bit (bf16) decoder."""
    m = load().methods.get(precision)
    return m is not None and m.get("matmul_dtype") == FP8


# --------------------------------------------------------------------------------------------- device
def _events_ms(fn, iters: int, warm: int = 3) -> list[float]:
    from measurement.roofline import event_times_ms
    return event_times_ms(fn, iters, warm)


class Energy:
    """NVML total-energy counter of one GPU (mJ), or nothing when NVML does not answer."""

    def __init__(self, index: int):
        self.h = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nv = pynvml
            self.h = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)
        except Exception:
            self.h = None

    def read_j(self):
        if self.h is None:
            return None
        try:
            return self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h) / 1000.0
        except Exception:
            return None


def interconnect() -> str:
    import subprocess
    try:
        t = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=20).stdout
    except Exception:
        return ""
    for line in t.splitlines():
        if line.startswith("GPU0"):
            parts = line.split()
            return parts[2] if len(parts) > 2 else ""
    return ""


class Bench:
    """One rank of a sweep; rank 0 writes rows."""

    def __init__(self, a):
        torch = _torch()
        import torch.distributed as dist
        self.a = a
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(self.local)
        self.dev = torch.device("cuda", self.local)
        if self.world > 1:
            dist.init_process_group("nccl", device_id=self.dev)
        self.dist = dist if self.world > 1 else None
        self.energy = Energy(self.local)
        self.out = Path(a.out)
        self.t0 = time.time()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            new = not (self.out / "tp_rows.csv").exists()
            self.fh = open(self.out / "tp_rows.csv", "a", newline="")
            self.w = csv.DictWriter(self.fh, fieldnames=COLUMNS)
            if new:
                self.w.writeheader()
            self.logf = open(self.out / "tp_run.log", "a")
        from measurement.roofline import measure_peaks
        self.peaks = measure_peaks()
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else ""
        self.base = {"engine": "harness-tp", "engine_version": f"torch {torch.__version__}, NCCL {nccl}",
                     "gpu": "h200", "gpu_name": torch.cuda.get_device_name(self.dev),
                     "interconnect": interconnect() if self.world > 1 else "",
                     "weights": "random", "source_id": a.source_id, "commit": a.commit,
                     "torch": torch.__version__, "nccl": nccl, "driver": _driver()}
        self.log(f"rank {self.rank}/{self.world} peaks {self.peaks} base {self.base}")

    def log(self, msg):
        if self.rank == 0:
            line = f"[{time.time() - self.t0:7.1f}s] {msg}"
            print(line, flush=True)
            self.logf.write(line + "\n")
            self.logf.flush()

    def left(self):
        return self.a.budget - (time.time() - self.t0)

    def gather(self, obj):
        if self.dist is None:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def emit(self, **row):
        if self.rank != 0:
            return
        r = dict(self.base, date_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **row)
        self.w.writerow({k: r.get(k, "") for k in COLUMNS})
        self.fh.flush()

    def barrier(self):
        if self.dist is not None:
            self.dist.barrier()

    # all-reduce alone ------------------------------------------------------------------------------
    def allreduce_sweep(self, hidden: int, sizes_tokens: list[int]):
        torch = _torch()
        if self.dist is None:
            return
        for tok in sizes_tokens:
            nbytes = tok * hidden * 2
            x = torch.randn(tok, hidden, dtype=torch.bfloat16, device=self.dev)
            reps = 20
            g = None
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        self.dist.all_reduce(x)
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    for _ in range(reps):
                        self.dist.all_reduce(x)
                ts = [t / reps for t in _events_ms(g.replay, 15)]
                graphs = 1
            except Exception as e:  # eager fallback
                self.log(f"all-reduce graph capture failed ({type(e).__name__}: {e}); eager")
                ts = _events_ms(lambda: self.dist.all_reduce(x), 30)
                graphs = 0
            ts = [max(self.gather(t)) for t in ts]
            us = statistics.median(ts) * 1000
            algbw = nbytes / (us * 1e-6) / 1e9
            bus = algbw * 2 * (self.world - 1) / self.world
            prec = load().default_method("precision")  # the bf16 activations of the 16-bit decoder are reduced
            self.emit(num_gpus=self.world, parallel="tp", model="", precision=prec, batch=tok,
                      metric="allreduce_us", value=f"{us:.3f}", unit="us", graphs=graphs,
                      samples=" ".join(f"{t * 1000:.2f}" for t in ts), msg_bytes=nbytes,
                      busbw_gbps=f"{bus:.2f}", status="ok",
                      notes=f"all_reduce of {tok} x {hidden} bf16; algbw {algbw:.2f} GB/s")
            self.log(f"allreduce {nbytes / 1e6:9.3f} MB: {us:9.2f} us busbw {bus:7.1f} GB/s")
            x = g = None  # free before the next size
            torch.cuda.empty_cache()

    # one model -------------------------------------------------------------------------------------
    def model_sweep(self, model: str, precision: str):
        torch = _torch()
        llm = load().llm(model)
        tp = self.world
        common = dict(num_gpus=tp, parallel="tp" if tp > 1 else "none", model=model, precision=precision)
        try:
            plan = shard_plan(llm, tp)
        except Unsupported as e:
            self.emit(**common, metric="decode_step_ms", status="unsupported", reason=str(e))
            return
        need = plan.params * 2 * (1.5 if (fp8 := _fp8(precision)) else 1.0)
        free = min(self.gather(torch.cuda.mem_get_info(self.dev)[0]))
        if need > free - 4e9:
            self.emit(**common, metric="decode_step_ms", status="does_not_fit",
                      reason=f"{need / 1e9:.1f} GB of weights per GPU at {tp} GPU(s); {free / 1e9:.1f} GB free")
            self.log(f"{model} {precision} tp{tp}: does not fit ({need / 1e9:.1f} GB)")
            return
        t0 = time.time()
        w = random_shard(llm, tp, device=self.dev, dtype=torch.bfloat16)
        if fp8:
            w = to_fp8(w, plan.layers)
            torch.cuda.empty_cache()
        dec = Decoder(llm, plan, w, group=self.dist.group.WORLD if self.dist else None, rank=self.rank,
                      max_pos=max(self.a.contexts) + 16, fp8=fp8)
        wbytes = sum(t.numel() * t.element_size() for t in w.values())
        self.barrier()
        self.log(f"{model} {precision} tp{tp}: weights {wbytes / 1e9:.2f} GB/GPU in {time.time() - t0:.1f}s")
        for ctx in self.a.contexts:
            for B in self.a.batches:
                if self.left() < 25:
                    self.log("deadline: stop")
                    return
                self.decode_one(dec, plan, common, B, ctx, wbytes, precision)
            for B in self.a.prefill_batches:
                if B * ctx > self.a.max_prefill_tokens or self.left() < 25:
                    continue
                self.prefill_one(dec, plan, common, B, ctx, wbytes, precision)
        del dec, w
        torch.cuda.empty_cache()

    def _status(self, common, metric, B, ctx, e):
        oom = isinstance(e, _torch().OutOfMemoryError) or "out of memory" in str(e).lower()
        self.emit(**common, metric=metric, batch=B, prompt_len=ctx, status="does_not_fit" if oom else "error",
                  reason=f"{type(e).__name__}: {e}"[:300])
        self.log(f"  {metric} B={B} ctx={ctx}: {'OOM' if oom else 'error'} {type(e).__name__}: {str(e)[:200]}")

    def _mem_gb(self):
        torch = _torch()
        return max(self.gather(torch.cuda.max_memory_allocated(self.dev))) / 1e9

    def _roof(self, step_bytes, flops, dtype=BF16):
        bw = self.peaks.get("copy_bw_gbps")
        pk = self.peaks.get(f"matmul_tflops_{dtype}") or self.peaks.get("matmul_tflops_bf16")
        if not bw or not pk:
            return None, ""
        tm, tc = step_bytes / (bw * 1e9), flops / (pk * 1e12)
        return 1000 * max(tm, tc), ("memory" if tm >= tc else "compute")

    def decode_one(self, dec, plan, common, B, ctx, wbytes, precision):
        torch = _torch()
        torch.cuda.reset_peak_memory_stats(self.dev)
        g = caches = None
        try:
            caches = dec.new_caches(B, ctx, random=True)
            ids = torch.randint(0, dec.llm.vocab_size, (B, 1), device=self.dev)
            pos = torch.full((1,), ctx - 1, dtype=torch.long, device=self.dev)
            slot = torch.full((1,), ctx - 1, dtype=torch.long, device=self.dev)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    dec.forward(ids, pos, caches, slot)
            torch.cuda.current_stream().wait_stream(s)
            graphs = 1
            try:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    dec.forward(ids, pos, caches, slot)
                step = g.replay
            except Exception as e:
                self.log(f"  decode graph capture failed ({type(e).__name__}: {str(e)[:160]}); eager")
                g, graphs = None, 0
                torch.cuda.synchronize()
                self.barrier()

                def step():
                    dec.forward(ids, pos, caches, slot)
            self.barrier()
            ms = [max(x) for x in zip(*self.gather(_events_ms(step, 30)))]
            # energy window of >= 0.5 s of replays; every rank must replay the same count (the collectives
            # in the graph pair up across ranks), so n comes from the gathered times
            n = max(20, int(0.5 / max(statistics.median(ms) / 1000, 1e-5)))
            self.barrier()
            torch.cuda.synchronize()
            e0, t0 = self.energy.read_j(), time.time()
            for _ in range(n):
                step()
            torch.cuda.synchronize()
            e1, t1 = self.energy.read_j(), time.time()
            pw = (e1 - e0) / (t1 - t0) if e0 is not None and e1 is not None and t1 > t0 else None
            pws = self.gather(pw)
            med = statistics.median(ms)
            kvb = B * ctx * plan.kv_bytes_per_token()
            flops = 2 * plan.matmul_params * B + B * 4 * ctx * plan.layers * plan.q_heads * plan.head_dim
            roof, bound = self._roof(wbytes + kvb, flops, FP8 if _fp8(precision) else BF16)
            tot_w = sum(p for p in pws if p is not None) if all(p is not None for p in pws) else None
            self.emit(**common, batch=B, prompt_len=ctx, gen_len=1, metric="decode_step_ms", value=f"{med:.4f}",
                      unit="ms", samples=" ".join(f"{x:.4f}" for x in ms), graphs=graphs,
                      msg_bytes=plan.allreduce_bytes(B), mem_gb_per_gpu=f"{self._mem_gb():.2f}",
                      power_w_per_gpu=" ".join(f"{p:.1f}" if p is not None else "" for p in pws),
                      j_per_token=f"{tot_w * med / 1000 / B:.5f}" if tot_w else "",
                      roofline_value=f"{roof:.4f}" if roof else "",
                      roofline_frac=f"{roof / med:.3f}" if roof else "", roofline_bound=bound, status="ok",
                      notes=f"one token per sequence at context {ctx} (all {ctx} cache slots attended); "
                            f"{2 * plan.layers + 1} all-reduces + 1 all-gather per step")
            self.log(f"  decode B={B:3d} ctx={ctx:5d}: {med:8.3f} ms  roof {roof or 0:.3f} "
                     f"({(roof or 0) / med:.2f}) W {pws} graphs={graphs}")
        except Exception as e:
            self._status(common, "decode_step_ms", B, ctx, e)
            torch.cuda.synchronize()
        finally:
            g = caches = None
            torch.cuda.empty_cache()
            self.barrier()

    def prefill_one(self, dec, plan, common, B, P, wbytes, precision):
        torch = _torch()
        torch.cuda.reset_peak_memory_stats(self.dev)
        caches = None
        try:
            caches = dec.new_caches(B, P)
            ids = torch.randint(0, dec.llm.vocab_size, (B, P), device=self.dev)
            pos = torch.arange(P, device=self.dev)
            self.barrier()
            e0, t0 = self.energy.read_j(), time.time()
            ms = _events_ms(lambda: dec.forward(ids, pos, caches), 3, warm=1)
            e1, t1 = self.energy.read_j(), time.time()
            pw = (e1 - e0) / (t1 - t0) if e0 is not None and e1 is not None else None
            pws = self.gather(pw)
            ms = [max(x) for x in zip(*self.gather(ms))]
            med = statistics.median(ms)
            flops = (2 * plan.matmul_params * B * P - 2 * plan.vocab * plan.hidden * B * (P - 1)
                     + 2 * B * P * P * plan.layers * plan.q_heads * plan.head_dim)
            roof, bound = self._roof(wbytes + B * P * plan.kv_bytes_per_token(), flops,
                                     FP8 if _fp8(precision) else BF16)
            tot_w = sum(pws) if all(p is not None for p in pws) else None
            self.emit(**common, batch=B, prompt_len=P, gen_len=0, metric="prefill_ms", value=f"{med:.3f}", unit="ms",
                      samples=" ".join(f"{x:.3f}" for x in ms), graphs=0, msg_bytes=plan.allreduce_bytes(B * P),
                      mem_gb_per_gpu=f"{self._mem_gb():.2f}",
                      power_w_per_gpu=" ".join(f"{p:.1f}" if p is not None else "" for p in pws),
                      j_per_token=f"{tot_w * med / 1000 / (B * P):.6f}" if tot_w else "",
                      roofline_value=f"{roof:.3f}" if roof else "", roofline_frac=f"{roof / med:.3f}" if roof else "",
                      roofline_bound=bound, status="ok",
                      notes="eager; causal SDPA over the whole prompt at once; logits of the last position only; "
                            "power over warm-up + 3 timed passes")
            self.log(f"  prefill B={B:3d} P={P:5d}: {med:9.2f} ms  roof {roof or 0:.2f} ({(roof or 0) / med:.2f})")
        except Exception as e:
            self._status(common, "prefill_ms", B, P, e)
            torch.cuda.synchronize()
        finally:
            caches = None
            torch.cuda.empty_cache()
            self.barrier()

    def close(self):
        """Flush and leave without destroy_process_group: after collectives were captured in CUDA graphs it
        can hang in ncclCommDestroy (pytorch/pytorch#115388), which cost the first 2-GPU call its TP run."""
        self.barrier()
        if self.rank == 0:
            self.fh.flush()
            self.logf.flush()
        _torch().cuda.synchronize()


def _driver():
    import subprocess
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip()
    except Exception:
        return ""


def _ints(s):
    return [int(x) for x in str(s).split(",") if x.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="llama3.1-8b")
    ap.add_argument("--precisions", default=load().default_method("precision"), help="comma list of bf16, fp8")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64", type=_ints)
    ap.add_argument("--contexts", default="512,4096", type=_ints)
    ap.add_argument("--prefill-batches", default="1,4,16", type=_ints)
    ap.add_argument("--max-prefill-tokens", type=int, default=16384)
    ap.add_argument("--allreduce-tokens", default="1,2,4,8,16,32,64,512,2048,4096,8192,16384", type=_ints)
    ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--out", required=True)
    ap.add_argument("--source-id", default="")
    ap.add_argument("--commit", default="")
    a = ap.parse_args(argv)
    b = Bench(a)
    try:
        first = load().llm(a.models.split(",")[0])
        b.allreduce_sweep(first.hidden_size, a.allreduce_tokens)
        for m in a.models.split(","):
            for prec in a.precisions.split(","):
                if b.left() < 30:
                    break
                b.model_sweep(m, prec)
    finally:
        b.log(f"done in {time.time() - b.t0:.0f}s")
        b.close()
    if b.world > 1:
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

