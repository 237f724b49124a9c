"""The compiled backend's decode step: the model's own modules, called layer by layer, with one
``torch.compile``d decoder-layer function shared by every layer (regional compilation) and the whole
step captured as one CUDA graph per (batch, cache length).

Why not ``torch.compile(model)``: compiling the whole transformers forward took 20-105 s per
(model, method) and shape class on the H200 (measurement/NOTES.md), and its static-cache attention
repeats the KV heads for grouped-query attention and builds a full causal mask every step. Here:

* one decoder layer is compiled once (dynamo reuses the graph for every layer: the layers differ only in
  their parameters, which are inputs), so compile time no longer grows with depth;
* attention reads the StaticCache tensors of transformers directly, in grouped form
  (``B x kv_heads x group x head_dim`` queries against ``B x kv_heads x L x head_dim`` keys), so each KV
  element is read once, with a validity mask ``slot_index <= current_slot``;
* the step (embedding, rotary, layers, final norm, lm_head, greedy argmax, and the position/slot
  increments) is captured once as a CUDA graph; decoding ``n`` tokens is ``n`` graph replays, with no
  Python between tokens.

The KV cache is transformers' ``StaticCache`` filled by the (eager) prefill, so prefill, eviction to a
budget and the cache's memory are the same as the rest of the harness. ``slot`` (where the next key is
written) and ``pos`` (the rotary position) differ after eviction: a prompt of 8192 evicted to 1024 slots
decodes at slot 1024, position 8192.

Supported: decoder layers of the Llama / Qwen2 / Mistral shape (``self_attn.{q,k,v,o}_proj``,
``input_layernorm``, ``post_attention_layernorm``, ``mlp``; optional ``q_norm``/``k_norm``). A sliding
window shorter than the cache raises :class:`~measurement.method_base.Unsupported`.
"""
from __future__ import annotations

import sys

from .method_base import _torch


def _rope_fn(model):
    mod = sys.modules[type(model).__module__]
    fn = getattr(mod, "apply_rotary_pos_emb", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as fn
    return fn


def layer_step(layer, rope, h, d, cos, sin, k_cache, v_cache, slot, valid, fused=(None, None, None)):
    """One decoder layer for one new token per sequence. The residual stream arrives as ``h + d`` (the
    previous layer's stream and its MLP output, added here so the add fuses with the RMSNorm) and leaves
    the same way: returns ``(h, d)``. ``h``, ``d``: (B, 1, hidden); ``k_cache``/``v_cache``:
    (B, kv_heads, L, head_dim), written at ``slot`` (1-element long tensor); ``valid``: (L,) bool;
    ``fused``: (q|k|v weight, its bias, gate|up weight) from :func:`fuse_projections`, or Nones."""
    torch = _torch()
    attn, mlp = layer.self_attn, layer.mlp
    qkv_w, qkv_b, gu_w = fused
    B = h.shape[0]
    nkv, hd = k_cache.shape[1], k_cache.shape[-1]
    h = h + d
    x = layer.input_layernorm(h)
    if qkv_w is not None:
        qkv = torch.nn.functional.linear(x, qkv_w, qkv_b)
        q, k, v = qkv.split([qkv_w.shape[0] - 2 * nkv * hd, nkv * hd, nkv * hd], dim=-1)
        q, k, v = q.view(B, 1, -1, hd), k.view(B, 1, -1, hd), v.view(B, 1, -1, hd)
    else:
        q = attn.q_proj(x).view(B, 1, -1, hd)
        k = attn.k_proj(x).view(B, 1, -1, hd)
        v = attn.v_proj(x).view(B, 1, -1, hd)
    if getattr(attn, "q_norm", None) is not None:
        q = attn.q_norm(q)
        k = attn.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q, k = rope(q, k, cos, sin)
    k_cache.index_copy_(2, slot, k.to(k_cache.dtype))
    v_cache.index_copy_(2, slot, v.to(v_cache.dtype))
    qg = q.reshape(B, nkv, -1, hd).to(k_cache.dtype)            # query head i uses kv head i // group
    s = torch.matmul(qg, k_cache.transpose(-1, -2)).float() * attn.scaling   # (B, nkv, group, L)
    s = s.masked_fill(~valid, float("-inf"))
    p = torch.softmax(s, dim=-1).to(v_cache.dtype)
    o = torch.matmul(p, v_cache).reshape(B, 1, -1).to(h.dtype)   # (B, 1, heads * head_dim)
    h = h + attn.o_proj(o)
    x = layer.post_attention_layernorm(h)
    if gu_w is not None:
        g, u = torch.nn.functional.linear(x, gu_w).chunk(2, dim=-1)
        return h, mlp.down_proj(mlp.act_fn(g) * u)
    return h, mlp(x)


def _plain_linear(m, dtype=None) -> bool:
    torch = _torch()
    w = getattr(m, "weight", None)
    return (type(m) is torch.nn.Linear and w is not None and type(w.data) is torch.Tensor and w.dim() == 2
            and (dtype is None or w.dtype == dtype))


def _concat_rows(mods):
    """One (sum of rows) x in weight holding the modules' weights; each module's weight becomes a view of
    its rows (same storage, so memory does not grow and transformers' own forward still works)."""
    torch = _torch()
    ws = [m.weight for m in mods]
    big = torch.cat([w.data for w in ws], dim=0)
    at = 0
    for m, w in zip(mods, ws):
        n = w.shape[0]
        m.weight = torch.nn.Parameter(big[at:at + n], requires_grad=False)
        at += n
    return big


def fuse_projections(layer):
    """(q|k|v weight, q|k|v bias or None, gate|up weight) of one decoder layer, as in vLLM's merged QKV and
    gate-up projections: one GEMM reads the three (two) weights, instead of three (two) smaller ones.
    Only plain 16-bit ``nn.Linear`` weights are merged (quantized or sparse weights keep their own
    kernels: a pair of Nones). Done once per layer; the merged tensors are kept on the layer."""
    torch = _torch()
    got = layer.__dict__.get("_advisor_fused")
    if got is not None:
        return got
    attn, mlp = layer.self_attn, layer.mlp
    qkv_w = qkv_b = gu_w = None
    proj = [attn.q_proj, attn.k_proj, attn.v_proj]
    dt = attn.q_proj.weight.dtype
    if all(_plain_linear(m, dt) for m in proj) and len({m.in_features for m in proj}) == 1:
        biases = [m.bias for m in proj]
        if all(b is None for b in biases) or all(b is not None and type(b.data) is torch.Tensor for b in biases):
            qkv_w = _concat_rows(proj)
            if biases[0] is not None:
                qkv_b = torch.cat([b.data for b in biases])
    gu = [getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)]
    if all(m is not None and _plain_linear(m, dt) and m.bias is None for m in gu) and hasattr(mlp, "act_fn") \
            and hasattr(mlp, "down_proj") and gu[0].out_features == gu[1].out_features:
        gu_w = _concat_rows(gu)
    got = (qkv_w, qkv_b, gu_w)
    layer.__dict__["_advisor_fused"] = got
    return got


def check_supported(model, cache_len: int) -> None:
    from .method_base import Unsupported, decoder_layers

    sw = getattr(model.config, "sliding_window", None)
    if sw and cache_len > sw:
        raise Unsupported(f"regional-graph decode: sliding window {sw} < cache length {cache_len} (transformers' "
                          "rolling sliding-window cache is not implemented here)")
    for L in decoder_layers(model):
        a = getattr(L, "self_attn", None)
        if a is None or not all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) or \
                not all(hasattr(L, n) for n in ("input_layernorm", "post_attention_layernorm", "mlp")):
            raise Unsupported(f"regional-graph decode: {type(L).__name__} is not a Llama/Qwen2/Mistral-shaped layer")


def compile_layer(mode: str = "default", *, cdt: bool = False):
    """The shared decoder-layer function, compiled (``mode`` None or "none": eager). Dynamo's automatic
    dynamic shapes: the first (batch, cache length) gets a specialized graph, the second a graph dynamic in
    both, which then serves every other shape of the model/method.

    Marking the batch static (one graph per batch size) was tried on the GPUs: it did not help torchao
    int8 weight-only (144 ms/token at batch 8 either way, against 3.6 at batch 1), and each fp8 recompile
    took 30-146 s on the H100 (measurement/NOTES.md).

    ``cdt``: coordinate-descent tuning. At batch 1 on the H200 it turned inductor's decode GEMVs into tuned
    Triton reductions: 4.56 against 4.78 ms/token for the fused 8B step (measurement/profile_step.py, one
    run, device call 11), at 8.6 s of compile instead of 1.1."""
    torch = _torch()
    if mode in (None, "none"):
        return layer_step
    if cdt:  # inductor's coordinate-descent tuning of its Triton kernels (torch.compile takes mode or options)
        if mode != "default":
            raise ValueError("cdt needs mode 'default'")
        return torch.compile(layer_step, options={"coordinate_descent_tuning": True}, fullgraph=False)
    return torch.compile(layer_step, mode=None if mode == "default" else mode, fullgraph=False)


class GraphDecoder:
    """Greedy decode of one token per sequence per call, over a filled StaticCache.

    ``tok`` (B, 1) long, ``pos`` and ``slot`` (1,) long are static buffers: :meth:`reset` copies the
    start values in, :meth:`step` (or one graph replay) advances them."""

    def __init__(self, model, cache, batch: int, *, layer_fn=None, graph: bool = True, fuse: bool = False,
                 dynamic_len: bool = False):
        torch = _torch()
        from .method_base import decoder_layers

        self.model = model
        self.layers = list(decoder_layers(model))
        inner = getattr(model, "model", model)
        self.embed = model.get_input_embeddings()
        self.rotary = inner.rotary_emb
        self.norm = inner.norm
        self.lm_head = model.get_output_embeddings()
        self.rope = _rope_fn(model)
        self.kv = []
        for i, L in enumerate(self.layers):
            c = cache.layers[getattr(L.self_attn, "layer_idx", i)]
            self.kv.append((c.keys, c.values))
        self.L = self.kv[0][0].shape[2]
        check_supported(model, self.L)
        dev = self.kv[0][0].device
        self.device = dev
        self.tok = torch.zeros((batch, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((1,), dtype=torch.long, device=dev)
        self.slot = torch.zeros((1,), dtype=torch.long, device=dev)
        self.idx = torch.arange(self.L, device=dev)
        self.dynamic_len = dynamic_len
        if dynamic_len:  # compile the cache length as a symbol from the first call: no later recompile for it
            for kc, vc in self.kv:
                torch._dynamo.maybe_mark_dynamic(kc, 2)
                torch._dynamo.maybe_mark_dynamic(vc, 2)
        self.layer_fn = layer_fn or layer_step
        none = (None, None, None)
        self.fused = [fuse_projections(L) if fuse else none for L in self.layers]
        hidden = self.embed.weight.shape[-1]
        self.zero = torch.zeros((batch, 1, hidden), dtype=self.embed.weight.dtype, device=dev)
        self.use_graph = graph and dev.type == "cuda"
        self.graph = None

    def reset(self, tok0, pos: int, slot: int) -> None:
        self.tok.copy_(tok0.view_as(self.tok))
        self.pos.fill_(pos)
        self.slot.fill_(slot)

    def logits(self):
        """One step's logits (B, vocab) without advancing (tests)."""
        h = self.embed(self.tok)
        cos, sin = self.rotary(h, self.pos.view(1, 1))
        valid = self.idx <= self.slot
        if self.dynamic_len:
            _torch()._dynamo.maybe_mark_dynamic(valid, 0)
        d = self.zero
        for L, (kc, vc), f in zip(self.layers, self.kv, self.fused):
            h, d = self.layer_fn(L, self.rope, h, d, cos, sin, kc, vc, self.slot, valid, f)
        return self.lm_head(self.norm(h + d))[:, -1, :]

    def _step(self) -> None:
        nxt = self.logits().argmax(-1, keepdim=True)
        self.tok.copy_(nxt)
        self.pos.add_(1)
        self.slot.add_(1)

    def capture(self, warmup: int = 2) -> None:
        """Run the step ``warmup`` times on a side stream (compiles), then capture it. Warm-up writes KV at
        the current slot and advances the buffers: call :meth:`reset` afterwards."""
        torch = _torch()
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):
            for _ in range(warmup):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(s)
        torch.cuda.synchronize(self.device)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            self._step()
        self.graph = g

    def step(self) -> None:
        if self.use_graph:
            if self.graph is None:
                raise RuntimeError("GraphDecoder.capture() first")
            self.graph.replay()
        else:
            self._step()
