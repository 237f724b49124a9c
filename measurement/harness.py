"""The measurement harness: backend x scenario x launcher (optimum-benchmark style).

* :class:`RunConfig` - one row's identity (model, methods, backend, batch, prompt_len, gen_len, weights).
* Backends - :class:`EagerBackend` (plain transformers, DynamicCache, one Python call per token: what
  most users run) and :class:`CompiledBackend` (StaticCache + ``torch.compile``, CUDA graphs through
  mode ``reduce-overhead``: what a tuned deployment gets). Eager prefill feeds both.
* :class:`Scenario` - warm-up, then ``trials`` x (prefill of ``batch x prompt_len`` tokens, decode of
  ``gen_len`` tokens), each inside an NVML/synchronize window; medians, spread, memory, roofline.
* Launchers - :class:`InProcessLauncher` and :class:`SubprocessLauncher` (one child per model group, so an
  out-of-memory or a crash is isolated; a crash becomes an ``error`` row and the child restarts).
* :class:`RowStore` - ``<out>/rows.jsonl``, one JSON object per line, flushed and fsynced per row; a resumed
  sweep skips every config key already there (except ``error`` rows, retried once).

Rows have ``status`` ok | does_not_fit | unsupported | error, and ``reason``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .dataset import DEFAULT_COMPILE_MODE  # one definition, beside the row ids that use it

log = logging.getLogger("measurement")

IDENTITY = ("gpu", "model", "precision", "sparsity", "kv", "kv_budget", "backend", "batch", "prompt_len",
            "gen_len", "weights")
SPREAD_FLAG_PCT = 3.0
SLOW_DECODE_S = 15.0  # seconds for one warm-up decode of gen_len tokens above which only one trial is timed
EVICT = ("streamingllm", "snapkv", "pyramidkv")
KVQ = ("kv-fp8", "kv-int8", "kv-int4", "kv-int2")


@dataclass(frozen=True)
class RunConfig:
    model: str
    precision: str = "bf16"
    sparsity: str = "dense"
    kv: str = "kv-fp16"
    kv_budget: int | None = None
    backend: str = "compiled"
    batch: int = 1
    prompt_len: int = 512
    gen_len: int = 128
    weights: str = "random"
    trials: int = 3
    warmup: int = 1
    compile_mode: str = DEFAULT_COMPILE_MODE

    def ident(self, gpu: str) -> dict:
        d = dataclasses.asdict(self)
        d["gpu"] = gpu
        return {k: d[k] for k in IDENTITY + ("compile_mode",)}

    def key(self, gpu: str) -> str:
        return config_key(self.ident(gpu))

    @property
    def group(self) -> tuple:
        """Configs sharing one built + compressed model."""
        return (self.model, self.precision, self.sparsity, self.weights)




def config_key(d: dict) -> str:
    """The identity of a measured configuration. A compiled run's non-default compile mode joins it (it
    changes the measurement); the default mode adds nothing, so keys of earlier rows are unchanged."""
    parts = []
    for k in IDENTITY:
        v = d.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            v = "-"
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        parts.append(f"{k}={v}")
    cm = d.get("compile_mode")
    if isinstance(cm, str) and cm and cm != DEFAULT_COMPILE_MODE and d.get("backend") == "compiled":
        parts.append(f"compile_mode={cm}")
    return "|".join(parts)


# ----------------------------------------------------------------------------------------- storage
class RowStore:
    """Append-only JSON lines; every row is flushed and fsynced before the next config starts."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "rows.jsonl"

    def rows(self) -> list[dict]:
        from .dataset import read_jsonl

        return read_jsonl(self.path) if self.path.exists() else []

    def done_keys(self, retry_errors: bool = True) -> set[str]:
        keys, errors = set(), {}
        for r in self.rows():
            k = r.get("key") or config_key(r)
            if r.get("status") == "error" and retry_errors:
                errors[k] = errors.get(k, 0) + 1
                continue
            keys.add(k)
        # an error row is retried once; after a second error it counts as done
        keys |= {k for k, n in errors.items() if n >= 2}
        return keys

    def append(self, row: dict) -> None:
        torn = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, 2)
                torn = fh.read(1) != b"\n"  # a hard kill mid-write left a partial line: start a new one
        with open(self.path, "a", encoding="utf-8") as fh:
            if torn:
                fh.write("\n")
            fh.write(json.dumps(row, default=_json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)


# ----------------------------------------------------------------------------------------- statistics
def med_spread(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = statistics.median(xs)
    spread = 100.0 * (max(xs) - min(xs)) / m if m else None
    return m, spread


# ----------------------------------------------------------------------------------------- model context
@dataclass
class ModelContext:
    model: object
    config: object
    weights_source: str
    weights_bytes: float
    step_weight_bytes: float
    matmul_params: float
    device: object
    notes: list = field(default_factory=list)
    apply_s: float = 0.0
    compiled: object = None
    compiled_once: bool = False


def _release(device) -> None:
    """Drop compiled graphs and cached GPU memory between groups or after a failed config."""
    import gc

    import torch

    try:
        torch._dynamo.reset()
    except Exception:
        pass
    gc.collect()
    if _cuda(device):
        torch.cuda.empty_cache()


def _cuda(device) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


def _mem_alloc(device) -> int:
    import torch

    return torch.cuda.memory_allocated(device) if _cuda(device) else 0


def calib_batches_for(cfg, device, n: int = 4, seq: int = 256, seed: int = 0):
    """Random-token calibration batches (random weights have no meaningful text statistics)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.vocab_size, (1, seq), generator=g).to(device) for _ in range(n)]


def prepare_model(rc: RunConfig, device, *, catalog=None, config=None, calib=None) -> ModelContext:
    """Build the model of ``rc`` and apply its sparsity then its precision."""
    import torch

    from . import apply as A
    from .build import build_model

    if _cuda(device):
        torch.cuda.empty_cache()
    base = _mem_alloc(device)
    t0 = time.perf_counter()
    dtype = torch.float16 if rc.precision == "fp16" else torch.bfloat16
    model, cfg, src = build_model(rc.model, weights=rc.weights, device=device, dtype=dtype, catalog=catalog,
                                  config=config)
    needs_calib = rc.sparsity == "2:4-wanda" or rc.sparsity.startswith("drop-") or (
        rc.precision == "awq-int4" and src != "random")
    cal = calib if calib is not None else (calib_batches_for(cfg, device) if needs_calib else None)
    notes = []
    if src == "random" and rc.precision == "awq-int4":
        notes.append("awq-int4 on random weights: no AWQ scale search (same int4 g128 kernels)")
    if src == "random" and cal is not None:
        notes.append("calibration: random tokens through random weights (masks/choices carry no quality meaning)")
    A.apply_sparsity(model, rc.sparsity, calib_batches=cal)
    A.apply_precision(model, rc.precision, calib_batches=cal if rc.precision == "awq-int4" and src != "random"
                      else None)
    notes += A.notes_of(model)
    if _cuda(device):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        wbytes = _mem_alloc(device) - base
    else:
        wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    emb_bytes = emb.numel() * emb.element_size()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    step_bytes = wbytes - (0 if tied else emb_bytes)
    mm = 0
    for _, lin in A.decoder_linears(model):
        mm += lin.in_features * lin.out_features
    mm += model.config.vocab_size * model.config.hidden_size  # lm_head
    return ModelContext(model, model.config, src, float(wbytes), float(step_bytes), float(mm), device, notes,
                        apply_s=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- backends
@dataclass
class BackendConfig:
    name: str = "compiled"
    compile_mode: str = DEFAULT_COMPILE_MODE


PREFILL_CHUNK_TOKENS = 16384   # tokens per prefill forward (batch x chunk); longer prompts are prefilled in chunks
PREFILL_REPEAT_TOKENS = 32768  # above this many prompt tokens, prefill once and reuse its KV for every decode trial
SLOW_PREFILL_S = 2.0  # a first prefill slower than this is not repeated either (awq-int4's eager int4 prefill:
                      # ~2k tokens/s, 16 s for 16 x 2048 on the H200, call 13)


def prefill_chunk(rc: RunConfig) -> int:
    """Tokens per sequence per prefill forward. SnapKV/PyramidKV score the whole prompt: never chunked."""
    if rc.kv in ("snapkv", "pyramidkv"):
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

        from . import apply as A

        if rc.kv == "kv-fp16":
            return DynamicCache(config=ctx.config), "DynamicCache"
        cache, notes = A.make_kv_cache(rc.kv, ctx.config, budget=rc.kv_budget, model=ctx.model)
        return cache, notes

    def can_reuse(self, rc: RunConfig) -> bool:
        return rc.kv == "kv-fp16"

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
        if rc.kv == "pyramidkv":
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

        from . import apply as A
        from .env import Window

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
                dyn, notes = A.make_kv_cache(rc.kv, ctx.config, budget=rc.kv_budget, model=model)
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
                if not (_reference_shape(rc) and rc.precision == "bf16"):
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
                ref = rc.precision == "bf16" and rc.sparsity == "dense" and _reference_shape(rc)
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


def fuse_model(ctx: ModelContext) -> None:
    """Merge each decoder layer's q/k/v and gate/up weights (:func:`~measurement.decode_graph.fuse_projections`)
    once per built model, before any measurement: the originals become views of the merged tensors, so
    the weights' memory is unchanged; the transient copy is freed here, outside every measured window."""
    import torch

    from .apply import decoder_layers
    from .decode_graph import fuse_projections

    n = 0
    with torch.inference_mode():
        for L in decoder_layers(ctx.model):
            try:
                f = fuse_projections(L)
            except AttributeError:   # not a Llama-shaped layer: the decoder will say unsupported
                return
            n += f[0] is not None or f[2] is not None
    if _cuda(ctx.device):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    if n:
        ctx.notes.append(f"regional-graph-fused: q|k|v and gate|up weights merged in {n} layers")


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


# ----------------------------------------------------------------------------------------- scenario
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


# ----------------------------------------------------------------------------------------- runner
def base_row(rc: RunConfig, prov: dict) -> dict:
    d = dataclasses.asdict(rc)
    row = {"key": rc.key(prov.get("gpu", "cpu")), "gpu": prov.get("gpu", "cpu")}
    row.update({k: d[k] for k in IDENTITY if k != "gpu"})
    row.update({"trials": rc.trials, "compile_mode": rc.compile_mode if rc.backend == "compiled" else None})
    for k in ("gpu_name", "gpu_uuid", "driver", "cuda", "torch", "transformers", "bitsandbytes", "torchao",
              "git_commit", "code_sha"):
        row[k] = prov.get(k)
    row["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    row["config_json"] = json.dumps(d, sort_keys=True)
    return row


def static_check(rc: RunConfig) -> str | None:
    """Reasons a config cannot run whatever the machine (becomes an 'unsupported' row)."""
    s = rc.sparsity
    if s.startswith("2:4") and rc.precision not in ("fp16", "bf16"):
        return f"{s} composes with fp16/bf16 only (torch semi-structured kernels take 16-bit weights)"
    if rc.kv in EVICT and not rc.kv_budget:
        return f"{rc.kv} needs kv_budget"
    if rc.precision == "w8a8" and rc.backend == "compiled" and rc.batch <= 16:
        return ("w8a8 compiled: inductor lowers the int8 matmul to torch._int_mm, which needs more than 16 rows "
                "(seen on H200: 'self.size(0) needs to be greater than 16, but got 1'); eager rows measure w8a8 "
                "at small batch")
    return BACKENDS[rc.backend]().check(rc)


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    return "out of memory" in str(e).lower() and "cuda" in str(e).lower()


def _reason(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    return msg[:400]


class Runner:
    """Runs configs in this process, grouped so each (model, precision, sparsity) is built once."""

    def __init__(self, out_dir, *, device=None, deadline: float | None = None, catalog=None,
                 config_override=None, on_row: Callable[[dict], None] | None = None, measure_peaks: bool = True):
        import torch

        self.store = RowStore(out_dir)
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.deadline = deadline
        self.catalog = catalog
        self.config_override = config_override  # tests: a tiny transformers config instead of the profile's
        self.on_row = on_row
        self.measure_peaks = measure_peaks
        self._current = Path(out_dir) / "current.json"

    def peaks(self) -> dict:
        from .roofline import machine_peaks

        if not self.measure_peaks or not _cuda(self.device):
            return {}
        return machine_peaks()

    def _emit(self, row: dict) -> None:
        row["flags"] = ",".join(flags_for(row)) or None
        self.store.append(row)
        log.info("ROW %s %s %s %s %s B%s P%s G%s %s ms/tok=%s roof=%s spread=%s peak=%sGB wall=%ss %s", row.get("model"),
                 row.get("precision"), row.get("sparsity"), row.get("kv"), row.get("backend"), row.get("batch"),
                 row.get("prompt_len"), row.get("gen_len"), row.get("status"), _f(row.get("decode_ms_per_token")),
                 _f(row.get("decode_roofline_frac")), _f(row.get("decode_spread_pct")), _f(row.get("peak_mem_gb")),
                 row.get("wall_s"), (row.get("reason") or "")[:160])
        if self.on_row:
            self.on_row(row)

    def run(self, configs: Iterable[RunConfig]) -> list[dict]:
        from .env import provenance

        prov = provenance()
        gpu = prov.get("gpu", "cpu")
        done = self.store.done_keys()
        todo = [rc for rc in configs if rc.key(gpu) not in done]
        skipped = 0
        groups: dict[tuple, list[RunConfig]] = {}
        for rc in todo:
            groups.setdefault(rc.group, []).append(rc)
        emitted = []
        _tune_compile()
        peaks = self.peaks()
        for gkey, rcs in groups.items():
            rcs = sorted(rcs, key=_order)
            runnable = []
            for rc in rcs:
                why = static_check(rc)
                if why:
                    row = base_row(rc, prov)
                    row.update(status="unsupported", reason=why)
                    self._emit(row)
                    emitted.append(row)
                else:
                    runnable.append(rc)
            if not runnable:
                continue
            if self._late():
                skipped += len(runnable)
                continue
            emitted += self._run_group(runnable, prov, peaks)
        if skipped:
            log.warning("deadline reached: %d configs not started (resume to run them)", skipped)
        self._mark(None)
        return emitted

    def _late(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def _run_group(self, rcs: list[RunConfig], prov: dict, peaks: dict) -> list[dict]:
        import gc

        import torch

        from .apply import Unsupported

        out = []
        ctx = None
        try:
            self._mark(rcs[0])
            ctx = prepare_model(rcs[0], self.device, catalog=self.catalog, config=self.config_override)
            if any(rc.backend == "compiled" and rc.compile_mode in FUSED_MODES for rc in rcs):
                fuse_model(ctx)
            log.info("built %s %s %s in %.1fs (%.2f GB)", *rcs[0].group[:3], ctx.apply_s, ctx.weights_bytes / 1e9)
        except Exception as e:  # the whole group shares the outcome
            status = ("unsupported" if isinstance(e, Unsupported) else
                      "does_not_fit" if _is_oom(e) else "error")
            if status == "error":
                log.error("group %s failed: %s", rcs[0].group, traceback.format_exc())
            for rc in rcs:
                row = base_row(rc, prov)
                row.update(status=status, reason=str(e) if status == "unsupported" else
                           _reason(e) if status == "error" else f"OOM while loading/compressing: {_reason(e)}")
                self._emit(row)
                out.append(row)
            ctx = None
            gc.collect()
            if _cuda(self.device):
                torch.cuda.empty_cache()
            return out
        try:
            compiled_failure, compiled_failure_batch, n_compiled_failures = None, 0, 0
            for i, rc in enumerate(rcs):
                if self._late():
                    log.warning("deadline reached: %d configs of group %s not started", len(rcs) - i, rc.group)
                    break
                if rc.backend == "compiled" and compiled_failure and (rc.batch <= compiled_failure_batch
                                                                      or n_compiled_failures >= 2):
                    # one compile failure per group is enough: each retry would recompile (minutes)
                    row = base_row(rc, prov)
                    row.update(status="unsupported", reason=f"not tried after the first compiled failure of this "
                                                            f"model/method: {compiled_failure}"[:400])
                    self._emit(row)
                    out.append(row)
                    continue
                r = self.run_one(rc, ctx, prov, peaks)
                out.append(r)
                if rc.backend == "compiled" and r.get("status") == "unsupported" and \
                        str(r.get("reason", "")).startswith("compiled backend failed"):
                    compiled_failure = r["reason"]
                    compiled_failure_batch = max(compiled_failure_batch, rc.batch)
                    n_compiled_failures += 1
        finally:
            ctx = None
            _release(self.device)
            self._mark(None)
        return out

    def _mark(self, rc: RunConfig | None) -> None:
        try:
            if rc is None:
                self._current.unlink(missing_ok=True)
            else:
                self._current.write_text(json.dumps(dataclasses.asdict(rc)))
        except Exception:
            pass

    def run_one(self, rc: RunConfig, ctx: ModelContext, prov: dict, peaks: dict) -> dict:
        from .apply import Unsupported

        self._mark(rc)
        row = base_row(rc, prov)
        row.update(weights_source=ctx.weights_source, weights_gb=ctx.weights_bytes / 1e9,
                   step_weight_gb=ctx.step_weight_bytes / 1e9, method_notes="; ".join(ctx.notes) or None,
                   num_layers=ctx.config.num_hidden_layers, apply_s=round(ctx.apply_s, 2))
        t0 = time.perf_counter()
        try:
            backend = BACKENDS[rc.backend](BackendConfig(rc.backend, rc.compile_mode))
            res = Scenario(rc).run(ctx, backend)
            row.update(res)
            row["status"] = "ok"
            row["reason"] = None
            add_roofline(row, ctx, rc, peaks)
        except Exception as e:
            if _is_oom(e):
                row.update(status="does_not_fit", reason=f"OOM: {_reason(e)}")
            elif isinstance(e, Unsupported):
                row.update(status="unsupported", reason=str(e))
            elif rc.backend == "compiled":
                row.update(status="unsupported", reason=f"compiled backend failed: {_reason(e)}")
                log.error("%s: %s", rc, traceback.format_exc())
            else:
                row.update(status="error", reason=_reason(e))
                log.error("%s: %s", rc, traceback.format_exc())
            ctx.compiled = None
            _release(self.device)
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        self._emit(row)
        return row


def _f(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _reference_shape(rc: RunConfig) -> bool:
    """Batch 1, prompt 512: the shape of the issue's reference config, measured first and compiled fully
    specialized."""
    return rc.batch == 1 and rc.prompt_len == 512


def _order(rc: RunConfig):
    """Compiled first with batch 1 prompt 512 first (the first compiled shape is fully specialized)."""
    # then one that differs in both batch and prompt length, so that the second compile marks both dims
    # dynamic at once and later shapes reuse it
    return (rc.backend != "compiled", rc.kv != "kv-fp16", not _reference_shape(rc),
            rc.batch == 1 or rc.prompt_len == 512, rc.kv, rc.kv_budget or 0, rc.batch, rc.prompt_len)


# ----------------------------------------------------------------------------------------- launchers
class InProcessLauncher:
    def __init__(self, out_dir, **kw):
        self.out_dir, self.kw = out_dir, kw

    def run(self, configs: list[RunConfig]) -> list[dict]:
        return Runner(self.out_dir, **self.kw).run(configs)


def die_with_parent() -> None:
    """preexec_fn for GPU workers: Linux delivers SIGTERM to the child when its parent dies (PR_SET_PDEATHSIG),
    so killing a sweep never leaves a worker holding the GPU. A no-op elsewhere."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class SubprocessLauncher:
    """One child process per model (an OOM or a crash stays inside it). A crashed child's current config
    becomes an ``error`` row and the child is restarted on the rest."""

    def __init__(self, out_dir, *, deadline: float | None = None, on_row=None, python: str = sys.executable,
                 max_restarts: int = 3):
        self.out_dir = Path(out_dir)
        self.deadline = deadline
        self.on_row = on_row
        self.python = python
        self.max_restarts = max_restarts

    def run(self, configs: list[RunConfig]) -> list[dict]:
        from .env import provenance

        store = RowStore(self.out_dir)
        segments: list[tuple[str, list[RunConfig]]] = []  # consecutive runs of one model keep the sweep's order
        for rc in configs:
            if segments and segments[-1][0] == rc.model:
                segments[-1][1].append(rc)
            else:
                segments.append((rc.model, [rc]))
        env = dict(os.environ)
        env.setdefault("ADVISOR_PEAKS_FILE", str(self.out_dir / "machine_peaks.json"))
        seen = len(store.rows())
        for seg, (model, rcs) in enumerate(segments):
            for attempt in range(self.max_restarts + 1):
                if self.deadline and time.time() > self.deadline:
                    break
                import tempfile

                plan = Path(tempfile.gettempdir()) / f"advisor_plan_{os.getpid()}_{seg}_{_safe(model)}.json"
                plan.write_text(json.dumps([dataclasses.asdict(r) for r in rcs]))
                cmd = [self.python, "-m", "measurement.harness", "--plan", str(plan), "--out", str(self.out_dir)]
                if self.deadline:
                    cmd += ["--deadline", str(self.deadline)]
                p = subprocess.run(cmd, env=env, cwd=str(Path(__file__).resolve().parent.parent),
                                   preexec_fn=die_with_parent)  # noqa: PLW1509 - no threads start before it
                rows = store.rows()
                for r in rows[seen:]:
                    if self.on_row:
                        self.on_row(r)
                seen = len(rows)
                if p.returncode == 0:
                    break
                cur = self.out_dir / "current.json"
                if cur.exists():
                    try:
                        rc = RunConfig(**json.loads(cur.read_text()))
                        prov = provenance()
                        row = base_row(rc, {**prov, "gpu": rows[-1]["gpu"] if rows else prov.get("gpu")})
                        row.update(status="error", reason=f"worker process died (exit code {p.returncode})")
                        row["flags"] = None
                        store.append(row)
                        seen += 1
                        if self.on_row:
                            self.on_row(row)
                    except Exception:
                        pass
                    cur.unlink(missing_ok=True)
        return store.rows()


def _tune_compile() -> None:
    """Dynamo settings for many shapes per model group; ADVISOR_CDT=1 turns on inductor's coordinate
    descent tuning (gpt-fast style; longer compile)."""
    try:
        import torch

        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
        if os.environ.get("ADVISOR_CDT") == "1":
            torch._inductor.config.coordinate_descent_tuning = True
    except Exception:
        pass


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in s)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="measurement worker (one process runs a plan of configs)")
    ap.add_argument("--plan", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    fh = logging.FileHandler(Path(a.out) / "log.txt")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("measurement").addHandler(fh)
    _tune_compile()
    configs = [RunConfig(**d) for d in json.loads(Path(a.plan).read_text())]
    Runner(a.out, deadline=a.deadline).run(configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
