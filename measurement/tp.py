"""Tensor-parallel decode and prefill of a catalog LLM's architecture on N GPUs (issues 12 and 16).

    python -m torch.distributed.run --nproc-per-node 2 -m measurement.tp --models llama3.1-8b \
        --precisions bf16 --out $OUT --source-id CALL --commit SHA

Megatron-style sharding, as vLLM and TensorRT-LLM shard a Llama / Qwen2 / Mistral decoder: q/k/v and
gate/up split by output rows (heads, intermediate channels), o and down split by input columns, one
all-reduce after each (2 per layer); the embedding split by vocabulary rows (masked lookup + all-reduce),
the lm_head by vocabulary rows with the logits all-gathered. KV heads fewer than ranks are replicated.
Weights are random (speed, memory and energy do not depend on their values); the KV cache of a decode
step holds ``context`` random positions, all attended.

Decode steps are captured as one CUDA graph per (batch, context), collectives included, and timed
between CUDA events over replays; prefill runs eagerly. Energy: each rank reads the NVML energy counter
of its own GPU over the measured window. The all-reduce is also timed on its own (nccl-tests style:
algorithm bandwidth = bytes / time, bus bandwidth = algbw x 2(n-1)/n) at the message sizes that decode
and prefill produce.

The pure parts (:func:`shard_plan`, :func:`shard`, :class:`Decoder` on CPU with the gloo backend) are
tested in tests/measurement/test_tp.py: N ranks give the logits of one.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ["engine", "engine_version", "gpu", "gpu_name", "num_gpus", "parallel", "interconnect", "model",
           "precision", "batch", "prompt_len", "gen_len", "metric", "value", "unit", "samples", "graphs",
           "msg_bytes", "busbw_gbps", "mem_gb_per_gpu", "power_w_per_gpu", "j_per_token", "roofline_value",
           "roofline_frac", "roofline_bound", "weights", "status", "reason", "source_id", "commit", "date_utc",
           "torch", "nccl", "driver", "notes"]


class Unsupported(ValueError):
    pass


# --------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class ShardPlan:
    """What one of ``tp`` ranks holds; counts, not bytes."""

    tp: int
    layers: int
    hidden: int
    head_dim: int
    q_heads: int          # per rank
    kv_heads: int         # per rank (replicated when the model has fewer KV heads than ranks)
    kv_replicas: int      # ranks holding each KV head
    inter: int            # intermediate channels per rank
    vocab: int            # vocabulary rows per rank (padded so every rank holds the same count)
    bias: bool

    @property
    def layer_params(self) -> int:
        hd, h = self.head_dim, self.hidden
        qkv = (self.q_heads + 2 * self.kv_heads) * hd * h
        o = h * self.q_heads * hd
        mlp = 3 * self.inter * h
        b = (self.q_heads + 2 * self.kv_heads) * hd if self.bias else 0
        return qkv + o + mlp + b + 2 * h

    @property
    def params(self) -> int:
        """Parameters per rank: layers, final norm, the embedding and lm_head shards (untied)."""
        return self.layers * self.layer_params + self.hidden + 2 * self.vocab * self.hidden

    @property
    def matmul_params(self) -> int:
        """Parameters a decode token multiplies on one rank (layers + lm_head shard)."""
        return self.layers * (self.layer_params - 2 * self.hidden) + self.vocab * self.hidden

    def kv_bytes_per_token(self, elem_bytes: float = 2.0) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * elem_bytes

    def allreduce_bytes(self, tokens: int, elem_bytes: int = 2) -> int:
        """One all-reduce message: ``tokens`` x hidden activations."""
        return tokens * self.hidden * elem_bytes


def shard_plan(llm, tp: int) -> ShardPlan:
    """Raise :class:`Unsupported` when the heads or the intermediate size do not split ``tp`` ways."""
    heads, kv = llm.num_attention_heads, llm.num_key_value_heads
    if tp < 1:
        raise Unsupported(f"tp must be >= 1, got {tp}")
    if heads % tp:
        raise Unsupported(f"{llm.id}: {heads} attention heads do not split over {tp} GPUs")
    if kv % tp and tp % kv:
        raise Unsupported(f"{llm.id}: {kv} KV heads do not split over (or replicate onto) {tp} GPUs")
    if llm.intermediate_size % tp:
        raise Unsupported(f"{llm.id}: intermediate size {llm.intermediate_size} does not split over {tp} GPUs")
    hd = llm.head_dim or llm.hidden_size // heads
    return ShardPlan(tp=tp, layers=llm.num_hidden_layers, hidden=llm.hidden_size, head_dim=hd,
                     q_heads=heads // tp, kv_heads=max(1, kv // tp), kv_replicas=max(1, tp // kv),
                     inter=llm.intermediate_size // tp, vocab=-(-llm.vocab_size // tp),
                     bias=bool(getattr(llm, "attention_bias", False) or llm.model_type == "qwen2"))


# --------------------------------------------------------------------------------------------- weights
def _torch():
    import torch
    return torch


def random_full(llm, *, layers: int | None = None, dtype=None, device="cpu", seed: int = 0, std: float = 0.02):
    """Unsharded random weights (small models, tests): dict of tensors by name."""
    torch = _torch()
    p = shard_plan(llm, 1)
    L = layers or p.layers
    g = torch.Generator(device="cpu").manual_seed(seed)
    dt_ = dtype or torch.float32

    def r(*shape):
        return (torch.randn(*shape, generator=g) * std).to(dtype=dt_, device=device)

    hd, h = p.head_dim, p.hidden
    w = {"embed": r(llm.vocab_size, h), "lm_head": r(llm.vocab_size, h),
         "norm": torch.ones(h, dtype=dt_, device=device)}
    for i in range(L):
        w[f"{i}.q"], w[f"{i}.k"], w[f"{i}.v"] = r(p.q_heads * hd, h), r(p.kv_heads * hd, h), r(p.kv_heads * hd, h)
        if p.bias:
            w[f"{i}.qb"], w[f"{i}.kb"], w[f"{i}.vb"] = r(p.q_heads * hd), r(p.kv_heads * hd), r(p.kv_heads * hd)
        w[f"{i}.o"], w[f"{i}.gate"], w[f"{i}.up"], w[f"{i}.down"] = (r(h, p.q_heads * hd), r(p.inter, h),
                                                                     r(p.inter, h), r(h, p.inter))
        w[f"{i}.ln1"], w[f"{i}.ln2"] = (1 + r(h)), (1 + r(h))
    return w


def shard(full: dict, llm, tp: int, rank: int, layers: int | None = None) -> dict:
    """Rank ``rank``'s shard of :func:`random_full` weights, fused as the decoder uses them."""
    torch = _torch()
    p = shard_plan(llm, tp)
    hd, L = p.head_dim, layers or p.layers
    V = llm.vocab_size

    def rows(t, n, i):
        return t[i * n:(i + 1) * n]

    kv_i = rank // p.kv_replicas if p.kv_replicas > 1 else rank
    out = {"norm": full["norm"]}
    for name in ("embed", "lm_head"):
        t = full[name]
        pad = p.vocab * tp - V
        if pad:
            t = torch.cat([t, torch.zeros(pad, t.shape[1], dtype=t.dtype, device=t.device)])
        out[name] = rows(t, p.vocab, rank).contiguous()
    for i in range(L):
        q = rows(full[f"{i}.q"], p.q_heads * hd, rank)
        k = rows(full[f"{i}.k"], p.kv_heads * hd, kv_i)
        v = rows(full[f"{i}.v"], p.kv_heads * hd, kv_i)
        out[f"{i}.qkv"] = torch.cat([q, k, v]).contiguous()
        if p.bias:
            out[f"{i}.qkvb"] = torch.cat([rows(full[f"{i}.qb"], p.q_heads * hd, rank),
                                          rows(full[f"{i}.kb"], p.kv_heads * hd, kv_i),
                                          rows(full[f"{i}.vb"], p.kv_heads * hd, kv_i)]).contiguous()
        out[f"{i}.o"] = full[f"{i}.o"][:, rank * p.q_heads * hd:(rank + 1) * p.q_heads * hd].contiguous()
        out[f"{i}.gu"] = torch.cat([rows(full[f"{i}.gate"], p.inter, rank),
                                    rows(full[f"{i}.up"], p.inter, rank)]).contiguous()
        out[f"{i}.down"] = full[f"{i}.down"][:, rank * p.inter:(rank + 1) * p.inter].contiguous()
        out[f"{i}.ln1"], out[f"{i}.ln2"] = full[f"{i}.ln1"], full[f"{i}.ln2"]
    return out


def random_shard(llm, tp: int, *, device, dtype, layers: int | None = None, std: float = 0.02) -> dict:
    """A rank's shard drawn directly on ``device`` (large models: no full copy anywhere)."""
    torch = _torch()
    p = shard_plan(llm, tp)
    hd, h, L = p.head_dim, p.hidden, layers or p.layers

    def r(*shape):
        return torch.empty(*shape, dtype=dtype, device=device).normal_(0, std)

    w = {"embed": r(p.vocab, h), "lm_head": r(p.vocab, h), "norm": torch.ones(h, dtype=dtype, device=device)}
    for i in range(L):
        w[f"{i}.qkv"] = r((p.q_heads + 2 * p.kv_heads) * hd, h)
        if p.bias:
            w[f"{i}.qkvb"] = r((p.q_heads + 2 * p.kv_heads) * hd)
        w[f"{i}.o"], w[f"{i}.gu"], w[f"{i}.down"] = r(h, p.q_heads * hd), r(2 * p.inter, h), r(h, p.inter)
        w[f"{i}.ln1"] = torch.ones(h, dtype=dtype, device=device)
        w[f"{i}.ln2"] = torch.ones(h, dtype=dtype, device=device)
    return w


def to_fp8(w: dict, layers: int) -> dict:
    """Per-tensor fp8 (e4m3) copies of the layer matmul weights, stored transposed (column-major) for
    ``torch._scaled_mm``; scale = amax / 448."""
    torch = _torch()
    for i in range(layers):
        for n in ("qkv", "o", "gu", "down"):
            t = w.pop(f"{i}.{n}")
            s = (t.abs().amax().float() / 448.0).clamp(min=1e-12)
            w[f"{i}.{n}8"] = (t.float() / s).to(torch.float8_e4m3fn).t()  # (in, out), column-major
            w[f"{i}.{n}s"] = s
            del t
    return w


# --------------------------------------------------------------------------------------------- model
class Decoder:
    """One rank's decoder. ``group``: a torch.distributed process group, or None for one rank."""

    def __init__(self, llm, plan: ShardPlan, w: dict, *, group=None, rank: int = 0, eps: float | None = None,
                 rope_theta: float | None = None, max_pos: int = 8192, fp8: bool = False):
        torch = _torch()
        self.llm, self.p, self.w, self.group, self.rank, self.fp8 = llm, plan, w, group, rank, fp8
        self.eps = eps or float(llm.raw.get("rms_norm_eps", 1e-5))
        theta = rope_theta or float(llm.raw.get("rope_theta", 10000.0))
        dev, dtype = w["norm"].device, w["norm"].dtype
        hd = plan.head_dim
        inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=dev) / hd)
        f = torch.outer(torch.arange(max_pos, dtype=torch.float32, device=dev), inv)
        emb = torch.cat([f, f], dim=-1)
        self.cos, self.sin = emb.cos().to(dtype), emb.sin().to(dtype)
        self.layers = sum(1 for k in w if k.endswith(".ln1"))

    # collectives -------------------------------------------------------------------------------------
    def all_reduce(self, x):
        if self.group is not None:
            _torch().distributed.all_reduce(x, group=self.group)
        return x

    def gather_logits(self, x):
        torch = _torch()
        if self.group is None:
            return x
        n, x = self.p.tp, x.contiguous()
        if torch.distributed.get_backend(self.group) == "nccl":
            out = torch.empty((n,) + tuple(x.shape), dtype=x.dtype, device=x.device)
            torch.distributed.all_gather_into_tensor(out, x, group=self.group)
            parts = list(out.unbind(0))
        else:  # gloo (CPU tests) has no all_gather_into_tensor
            parts = [torch.empty_like(x) for _ in range(n)]
            torch.distributed.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=-1)

    # pieces ------------------------------------------------------------------------------------------
    def embed(self, ids):
        torch = _torch()
        lo = self.rank * self.p.vocab
        local = ids - lo
        ok = (local >= 0) & (local < self.p.vocab)
        x = torch.nn.functional.embedding(local.clamp(0, self.p.vocab - 1), self.w["embed"])
        x = x * ok.unsqueeze(-1).to(x.dtype)
        return self.all_reduce(x)

    def norm(self, x, weight):
        torch = _torch()
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def linear(self, x, i, name, bias=None):
        torch = _torch()
        if not self.fp8:
            return torch.nn.functional.linear(x, self.w[f"{i}.{name}"], bias)
        w8, ws = self.w[f"{i}.{name}8"], self.w[f"{i}.{name}s"]
        shp = x.shape
        x2 = x.reshape(-1, shp[-1])
        xs = (x2.abs().amax().float() / 448.0).clamp(min=1e-12)
        x8 = (x2 / xs.to(x2.dtype)).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(x8, w8, scale_a=xs, scale_b=ws, out_dtype=x.dtype)
        if bias is not None:
            y = y + bias
        return y.reshape(*shp[:-1], -1)

    @staticmethod
    def rope(x, cos, sin):
        torch = _torch()
        h = x.shape[-1] // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
        return x * cos + rot * sin

    def layer(self, i, x, pos, kc, vc, slot=None):
        """``x``: (B, T, hidden); ``pos``: (T,) positions; ``kc``/``vc``: (B, kv_heads, C, hd).
        Prefill (``slot`` None) writes positions 0..T-1 and attends causally; decode (T = 1) writes at
        ``slot`` (1-element long tensor) and attends to the whole cache."""
        torch = _torch()
        F = torch.nn.functional
        p, w = self.p, self.w
        B, T, _ = x.shape
        hd, nq, nkv = p.head_dim, p.q_heads, p.kv_heads
        hN = self.norm(x, w[f"{i}.ln1"])
        qkv = self.linear(hN, i, "qkv", w.get(f"{i}.qkvb"))
        q, k, v = qkv.split([nq * hd, nkv * hd, nkv * hd], dim=-1)
        cos, sin = self.cos[pos].view(1, T, 1, hd), self.sin[pos].view(1, T, 1, hd)
        q = self.rope(q.view(B, T, nq, hd), cos, sin).transpose(1, 2)
        k = self.rope(k.view(B, T, nkv, hd), cos, sin).transpose(1, 2)
        v = v.view(B, T, nkv, hd).transpose(1, 2)
        if slot is None:
            kc[:, :, :T].copy_(k)
            vc[:, :, :T].copy_(v)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nq != nkv)
        else:
            kc.index_copy_(2, slot, k)
            vc.index_copy_(2, slot, v)
            a = F.scaled_dot_product_attention(q, kc, vc, enable_gqa=nq != nkv)
        a = a.transpose(1, 2).reshape(B, T, nq * hd)
        x = x + self.all_reduce(self.linear(a, i, "o"))
        hN = self.norm(x, w[f"{i}.ln2"])
        g, u = self.linear(hN, i, "gu").chunk(2, dim=-1)
        return x + self.all_reduce(self.linear(F.silu(g) * u, i, "down"))

    def forward(self, ids, pos, caches, slot=None, last_only=True):
        """Logits (B, T or 1, vocab) over the full vocabulary, on every rank."""
        torch = _torch()
        x = self.embed(ids)
        for i in range(self.layers):
            x = self.layer(i, x, pos, caches[i][0], caches[i][1], slot)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x, self.w["norm"])
        logits = torch.nn.functional.linear(x, self.w["lm_head"])
        return self.gather_logits(logits)[..., :self.llm.vocab_size]

    def new_caches(self, batch: int, ctx: int, *, random: bool = False):
        torch = _torch()
        p = self.p
        dev, dtype = self.w["norm"].device, self.w["norm"].dtype
        shape = (batch, p.kv_heads, ctx, p.head_dim)
        mk = (lambda: torch.empty(shape, dtype=dtype, device=dev).normal_()) if random else \
            (lambda: torch.zeros(shape, dtype=dtype, device=dev))
        return [(mk(), mk()) for _ in range(self.layers)]


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
            self.emit(num_gpus=self.world, parallel="tp", model="", precision="bf16", batch=tok,
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
        from profiles import load
        llm = load().llm(model)
        tp = self.world
        common = dict(num_gpus=tp, parallel="tp" if tp > 1 else "none", model=model, precision=precision)
        try:
            plan = shard_plan(llm, tp)
        except Unsupported as e:
            self.emit(**common, metric="decode_step_ms", status="unsupported", reason=str(e))
            return
        need = plan.params * 2 * (1.5 if precision == "fp8" else 1.0)
        free = min(self.gather(torch.cuda.mem_get_info(self.dev)[0]))
        if need > free - 4e9:
            self.emit(**common, metric="decode_step_ms", status="does_not_fit",
                      reason=f"{need / 1e9:.1f} GB of weights per GPU at {tp} GPU(s); {free / 1e9:.1f} GB free")
            self.log(f"{model} {precision} tp{tp}: does not fit ({need / 1e9:.1f} GB)")
            return
        t0 = time.time()
        w = random_shard(llm, tp, device=self.dev, dtype=torch.bfloat16)
        if precision == "fp8":
            w = to_fp8(w, plan.layers)
            torch.cuda.empty_cache()
        dec = Decoder(llm, plan, w, group=self.dist.group.WORLD if self.dist else None, rank=self.rank,
                      max_pos=max(self.a.contexts) + 16, fp8=precision == "fp8")
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

    def _roof(self, step_bytes, flops, dtype="bf16"):
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
            roof, bound = self._roof(wbytes + kvb, flops, "fp8" if precision == "fp8" else "bf16")
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
                                     "fp8" if precision == "fp8" else "bf16")
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
    ap.add_argument("--precisions", default="bf16", help="comma list of bf16, fp8")
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
        from profiles import load
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

