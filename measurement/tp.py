"""Tensor-parallel decode and prefill of a catalog LLM's architecture on N GPUs (issues 12 and 16).

    python -m torch.distributed.run --nproc-per-node 2 -m measurement.tp_bench --models llama3.1-8b \
        --precisions bf16 --out $OUT --source-id CALL --commit SHA   (the sweep: measurement/tp_bench.py)

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

from dataclasses import dataclass

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
