"""The two backends a configuration is measured on, and what they share.

* :class:`EagerBackend` - plain transformers, DynamicCache (or our quantized/evicting Cache), one Python
  call per token: what most users run.
* :class:`CompiledBackend` - StaticCache + ``torch.compile``, CUDA graphs through mode ``reduce-overhead``
  or the regional modes (:mod:`measurement.decode_graph`): what a tuned deployment gets.

Eager prefill feeds both, in chunks of at most ``PREFILL_CHUNK_TOKENS`` tokens (batch x chunk) per forward.
Each ``prefill``/``decode`` returns a :class:`measurement.env.Window` (seconds, energy, power).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .dataset import DEFAULT_COMPILE_MODE  # one definition, beside the row ids that use it
from .kv_cache import KV_EVICT, KV_QUANT, kv_spec
from .prepare import ModelContext
from .store import RunConfig, default_method

EVICT = KV_EVICT  # KV policies that keep a token budget (methods.yaml harness impl: evict)
KVQ = tuple(KV_QUANT)  # KV policies stored quantized (harness impl: quantize)


@dataclass
class BackendConfig:
    name: str = "compiled"
    compile_mode: str = DEFAULT_COMPILE_MODE


PREFILL_CHUNK_TOKENS = 16384   # tokens per prefill forward (batch x chunk); longer prompts are prefilled in chunks


def prefill_chunk(rc: RunConfig) -> int:
    """Tokens per sequence per prefill forward. SnapKV/PyramidKV score the whole prompt: never chunked
    (methods.yaml ``whole_prompt_prefill``)."""
    from profiles import load

    m = load().methods.get(rc.kv)
    if m is not None and m.get("whole_prompt_prefill"):
        return rc.prompt_len
    c = max(64, PREFILL_CHUNK_TOKENS // max(1, rc.batch))
    return rc.prompt_len if rc.prompt_len <= c else c


def _prefill(model, ids, cache, chunk: int):
    out = None
    P = ids.shape[1]
    for i in range(0, P, chunk):
        out = model(input_ids=ids[:, i:i + chunk], past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1:].argmax(-1)


class EagerBackend:
    """transformers forward per token, DynamicCache (or our quantized/evicting Cache)."""

    name = "eager"

    def __init__(self, cfg: BackendConfig | None = None):
        self.cfg = cfg or BackendConfig("eager")

    def check(self, rc: RunConfig) -> str | None:
        return None

    def make_cache(self, ctx: ModelContext, rc: RunConfig):
        from transformers import DynamicCache

        from .kv_cache import make_kv_cache

        if _model_cache(rc):
            return DynamicCache(config=ctx.config), "DynamicCache"
        cache, notes = make_kv_cache(rc.kv, ctx.config, budget=rc.kv_budget, model=ctx.model)
        return cache, notes

    def can_reuse(self, rc: RunConfig) -> bool:
        return _model_cache(rc)

    def prefill(self, ctx: ModelContext, rc: RunConfig, ids, state: dict):
        import torch

        from .env import Window

        old = state.pop("cache", None)
        if old is not None and hasattr(old, "detach"):
            old.detach()
        del old
        cache, notes = self.make_cache(ctx, rc)
        state["cache"], state["notes"] = cache, notes
        with torch.inference_mode():
            w = Window(ctx.device).begin()
            state["tok0"] = _prefill(ctx.model, ids, cache, prefill_chunk(rc))
            w.end()
        if hasattr(cache, "detach"):
            cache.detach()
        return w

    def reset(self, rc: RunConfig, state: dict) -> None:
        """Back to the state right after prefill (16-bit DynamicCache only)."""
        import torch

        P = rc.prompt_len
        with torch.inference_mode():
            for L in state["cache"].layers:
                L.keys = L.keys[..., :P, :]
                L.values = L.values[..., :P, :]

    def decode(self, ctx: ModelContext, rc: RunConfig, state: dict):
        import torch

        from .env import Window

        model, cache, tok = ctx.model, state["cache"], state["tok0"]
        with torch.inference_mode():
            w = Window(ctx.device).begin()
            for _ in range(rc.gen_len):
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
            w.end()
        return w


class CompiledBackend:
    """StaticCache (max_cache_len = prompt_len + gen_len) and a ``torch.compile``d decode step
    (``mode="reduce-overhead"``: inductor kernels replayed as CUDA graphs); greedy argmax stays on the
    GPU, so the decode loop never synchronizes with the host. Prefill runs eagerly into the same
    StaticCache. Eviction policies with one budget for all layers (streamingllm, snapkv) prefill eagerly
    into our evicting cache, then copy the kept KV into a StaticCache of ``budget + gen_len`` slots."""

    name = "compiled"

    def __init__(self, cfg: BackendConfig | None = None):
        self.cfg = cfg or BackendConfig("compiled")

    def check(self, rc: RunConfig) -> str | None:
        if rc.kv in KVQ:
            return ("compiled backend: our quantized KV cache grows and dequantizes dynamically (no static-shape "
                    "quantized attention kernel in torch/transformers); measured on the eager backend")
        if kv_spec(rc.kv).get("layer_budgets"):
            return ("compiled backend: per-layer KV budgets need per-layer masks under one StaticCache; "
                    "measured on the eager backend")
        return None

    def can_reuse(self, rc: RunConfig) -> bool:
        return True

    def compiled_step(self, ctx: ModelContext, mode: str):
        import torch

        if ctx.compiled is not None and ctx.compiled[0] == mode:
            return ctx.compiled[1]
        model = ctx.model

        def step(tok, pos, cache):
            out = model(input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True)
            return out.logits[:, -1:, :].argmax(-1)

        fn = torch.compile(step, mode=mode, fullgraph=False) if mode != "none" else step
        ctx.compiled = (mode, fn)
        return fn

    def prefill(self, ctx: ModelContext, rc: RunConfig, ids, state: dict):
        import torch
        from transformers import StaticCache

        from .env import Window
        from .kv_cache import make_kv_cache

        model = ctx.model
        P = ids.shape[1]
        evict = rc.kv in EVICT
        kept = min(rc.kv_budget, P) if evict else P
        cache = state.get("cache")
        if cache is None:
            cache = StaticCache(config=ctx.config, max_cache_len=kept + rc.gen_len)
            state["cache"] = cache
            state["notes"] = "StaticCache"
        for L in cache.layers:
            if getattr(L, "is_initialized", False):
                L.cumulative_length.zero_()
        with torch.inference_mode():
            w = Window(ctx.device).begin()
            if evict:
                dyn, notes = make_kv_cache(rc.kv, ctx.config, budget=rc.kv_budget, model=model)
                tok = _prefill(model, ids, dyn, prefill_chunk(rc))
                dyn.detach()
                _copy_into_static(dyn, cache)
                state["notes"] = "StaticCache filled from " + notes
                del dyn
            else:
                tok = _prefill(model, ids, cache, prefill_chunk(rc))
            w.end()
        state["tok0"], state["kept"] = tok, kept
        return w

    def reset(self, rc: RunConfig, state: dict) -> None:
        import torch

        with torch.inference_mode():  # the cache tensors were made under inference mode (lazy init on CUDA)
            for L in state["cache"].layers:
                L.cumulative_length.fill_(state["kept"])

    def decode(self, ctx: ModelContext, rc: RunConfig, state: dict):
        import torch

        from .env import Window

        if rc.compile_mode in REGIONAL_MODES:
            return self._decode_regional(ctx, rc, state)
        step = self.compiled_step(ctx, rc.compile_mode)
        cache = state["cache"]
        graphs = rc.compile_mode in ("reduce-overhead", "max-autotune")
        mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None) if graphs else None
        with torch.inference_mode():
            # token and position live in our own buffers: a CUDA-graph output is overwritten by the next
            # replay, so it is copied out at once and never fed back as an input
            tok = state["tok0"].clone()
            pos = torch.full((1, 1), rc.prompt_len, dtype=torch.long, device=tok.device)
            if rc.compile_mode != "none" and not getattr(ctx, "compiled_once", False):
                ctx.compiled_once = True
                if not (_reference_shape(rc) and rc.precision == default_method("precision")):
                    # one dynamic-shape compile serves every batch size and cache length of this model/method;
                    # the reference config (bf16, batch 1, prompt 512) keeps a fully specialized first graph
                    # and dynamo's automatic-dynamic recompiles once for the other shapes
                    _mark_dynamic(tok, cache)
            w = Window(ctx.device).begin()
            for _ in range(rc.gen_len):
                if mark is not None:
                    mark()
                tok.copy_(step(tok, pos, cache))
                pos.add_(1)
            w.end()
        return w


    def _decode_regional(self, ctx: ModelContext, rc: RunConfig, state: dict):
        """Decode through :class:`~measurement.decode_graph.GraphDecoder`: one compiled decoder-layer function
        for every layer of this model/method, one CUDA graph per config, ``gen_len`` replays per trial."""
        import torch

        from .decode_graph import GraphDecoder, compile_layer
        from .env import Window

        with torch.inference_mode():
            dec = state.get("decoder")
            if dec is None:
                first = ctx.compiled is None or ctx.compiled[0] != rc.compile_mode
                if first:
                    ctx.compiled = (rc.compile_mode, compile_layer(
                        "none" if rc.compile_mode in UNCOMPILED_MODES else "default",
                        cdt=rc.compile_mode in CDT_MODES))
                t0 = time.perf_counter()
                # the reference config (bf16, batch 1, prompt 512) keeps a fully specialized first graph; any
                # other first config compiles the cache length as a symbol, which saves the recompile that
                # batch 1 at another prompt length would cost (batch 1 is always specialized by dynamo)
                ref = (rc.precision == default_method("precision") and rc.sparsity == default_method("sparsity")
                       and _reference_shape(rc))
                dec = GraphDecoder(ctx.model, state["cache"], rc.batch, layer_fn=ctx.compiled[1],
                                   graph=rc.compile_mode in GRAPH_MODES, fuse=rc.compile_mode in FUSED_MODES,
                                   dynamic_len=first and not ref)
                dec.reset(state["tok0"], rc.prompt_len, state["kept"])
                if dec.use_graph:
                    dec.capture()
                state["decoder"] = dec
                state["capture_s"] = round(time.perf_counter() - t0, 2)
            dec.reset(state["tok0"], rc.prompt_len, state["kept"])
            w = Window(ctx.device).begin()
            for _ in range(rc.gen_len):
                dec.step()
            w.end()
        return w


REGIONAL_MODES = ("regional-graph-fused", "regional-graph-fused-cdt", "regional-graph-nocompile", "regional-graph",
                  "regional", "regional-eager")
GRAPH_MODES = ("regional-graph-fused", "regional-graph-fused-cdt", "regional-graph-nocompile",
               "regional-graph")  # the step replayed as one CUDA graph
FUSED_MODES = ("regional-graph-fused", "regional-graph-fused-cdt",
               "regional-graph-nocompile")  # merged q|k|v and gate|up weights (16-bit layers only)
CDT_MODES = ("regional-graph-fused-cdt",)  # + inductor coordinate-descent tuning
UNCOMPILED_MODES = ("regional-graph-nocompile", "regional-eager")  # the layer function runs as plain PyTorch ops


def _mark_dynamic(tok, cache) -> None:
    import torch

    mm = getattr(torch._dynamo, "maybe_mark_dynamic", None)
    if mm is None:
        return
    mm(tok, 0)
    for L in cache.layers:
        for t in (L.keys, L.values):
            if t is not None:
                mm(t, 0)
                mm(t, 2)


def _copy_into_static(dyn, static) -> None:
    for Ld, Ls in zip(dyn.layers, static.layers):
        k, v = Ld.keys, Ld.values
        if not Ls.is_initialized:
            Ls.lazy_initialization(k, v)
        n = k.shape[-2]
        Ls.keys[:, :, :n].copy_(k)
        Ls.values[:, :, :n].copy_(v)
        Ls.cumulative_length.fill_(n)


def cache_nbytes(cache) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "nbytes") and callable(cache.nbytes):
        return int(cache.nbytes())
    n = 0
    for L in getattr(cache, "layers", []):
        for t in (getattr(L, "keys", None), getattr(L, "values", None)):
            if t is not None and hasattr(t, "numel"):
                n += t.numel() * t.element_size()
    return n


def _stored(cache):
    if hasattr(cache, "stored_tokens"):
        st = cache.stored_tokens()
        return round(sum(st) / len(st), 1) if st else None
    return None


BACKENDS = {"eager": EagerBackend, "compiled": CompiledBackend}


def _model_cache(rc: RunConfig) -> bool:
    """The policy is the model's own 16-bit cache (methods.yaml harness impl: model_cache)."""
    return kv_spec(rc.kv).get("impl") == "model_cache"


def _reference_shape(rc: RunConfig) -> bool:
    """Batch 1, prompt 512: the shape of the issue's reference config, measured first and compiled fully
    specialized."""
    return rc.batch == 1 and rc.prompt_len == 512
