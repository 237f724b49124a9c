"""measurement.backends' prefill / decode / reset cycle without a GPU: torch, transformers' caches, the KV
cache factory and the regional decoder are faked; the model is a toy whose next token is the last one + 1 and
whose caches store the token ids they were fed, so that what each backend put where can be read back.
What is checked: chunked eager prefill, decode into the same cache and the reset to the prompt, our KV
caches detached after prefill, the StaticCache (filled from an evicting cache, kept across prefills, reset to
the kept tokens), the compiled step (mode, graph step marks, true positions, dynamic-shape marks except for
the reference shape), the regional decoder (built, compiled and captured once, reset every trial), and the
energy window each call returns."""
from __future__ import annotations

import sys
import types
from contextlib import nullcontext
from types import SimpleNamespace as NS

import numpy as np
import pytest

import measurement
from measurement import backends as BK
from measurement import env as ENV
from measurement import kv_cache as KV
from measurement.store import RunConfig

V = 1000


class T(np.ndarray):
    """A numpy array with the in-place tensor methods the backends call."""

    device = "cpu"

    def clone(self):
        return self.copy()

    def copy_(self, other):
        self[...] = other
        return self

    def add_(self, v):
        self += v
        return self

    def fill_(self, v):
        self[...] = v
        return self

    def zero_(self):
        return self.fill_(0)


def _t(a):
    return np.asarray(a).view(T)


class Model:
    """Greedy next token = last token + 1; writes the token ids it is fed into the cache."""

    def __init__(self):
        self.calls = []

    def __call__(self, input_ids, past_key_values=None, use_cache=True, logits_to_keep=None, position_ids=None):
        self.calls.append((input_ids.shape[1], None if position_ids is None else int(position_ids[0, 0]),
                           logits_to_keep))
        past_key_values.write(input_ids)
        ids = np.asarray(input_ids)
        nxt = ((ids[:, -logits_to_keep:] if logits_to_keep else ids) + 1) % V
        logits = np.zeros(nxt.shape + (V,))
        np.put_along_axis(logits, nxt[..., None], 1.0, axis=-1)
        return NS(logits=_t(logits))


class Layer:
    def __init__(self):
        self.keys = self.values = None


class DynamicCache:
    """Grows by what is written (keys/values hold the token ids, shape (B, 1, len, 1))."""

    def __init__(self, config=None, budget=None):
        self.config, self.budget, self.detached = config, budget, 0
        self.layers = [Layer(), Layer()]

    def write(self, ids):
        new = _t(np.asarray(ids)[:, None, :, None])
        for L in self.layers:
            L.keys = new if L.keys is None else _t(np.concatenate([L.keys, new], axis=2))
            if self.budget:  # an evicting cache keeps the last `budget` tokens
                L.keys = L.keys[:, :, -self.budget:]
            L.values = L.keys

    def tokens(self):
        return np.asarray(self.layers[0].keys)[0, 0, :, 0].tolist()

    def detach(self):
        self.detached += 1


class StaticLayer:
    def __init__(self, n):
        self.n, self.is_initialized, self.keys, self.values = n, False, None, None
        self.cumulative_length = _t(np.zeros(1, dtype=np.int64))

    def lazy_initialization(self, k, v):
        self.keys = _t(np.full((k.shape[0], 1, self.n, 1), -1))
        self.values = _t(np.full((k.shape[0], 1, self.n, 1), -1))
        self.is_initialized = True


class StaticCache:
    made = []

    def __init__(self, config=None, max_cache_len=None):
        self.max_cache_len = max_cache_len
        self.layers = [StaticLayer(max_cache_len), StaticLayer(max_cache_len)]
        StaticCache.made.append(self)

    def write(self, ids):
        ids = np.asarray(ids)[:, None, :, None]
        for L in self.layers:
            if not L.is_initialized:
                L.lazy_initialization(ids, ids)
            n = int(L.cumulative_length[0])
            L.keys[:, :, n:n + ids.shape[2]] = ids
            L.cumulative_length += ids.shape[2]

    def tokens(self):
        L = self.layers[0]
        return np.asarray(L.keys)[0, 0, :int(L.cumulative_length[0]), 0].tolist()


class NVML:
    """1 J per energy read."""

    def __init__(self):
        self.mj = 0

    def energy_mj(self):
        self.mj += 1000
        return self.mj

    def sm_clock_mhz(self):
        return 1980

    def power_w(self):
        return 500.0


@pytest.fixture
def fk(monkeypatch):
    log = NS(compiles=[], marks=[], dynamic=[], kv=[], graph=[])
    torch = types.ModuleType("torch")
    torch.long = np.int64
    torch.inference_mode = nullcontext
    torch.cuda = NS(is_available=lambda: False)
    torch.full = lambda shape, v, dtype=None, device=None: _t(np.full(shape, v, dtype=np.int64))

    def compile(fn, mode=None, fullgraph=None):
        log.compiles.append(mode)
        return fn

    torch.compile = compile
    torch.compiler = NS(cudagraph_mark_step_begin=lambda: log.marks.append(1))
    torch._dynamo = NS(maybe_mark_dynamic=lambda t, dim: log.dynamic.append((t.shape, dim)))
    monkeypatch.setitem(sys.modules, "torch", torch)
    tf = types.ModuleType("transformers")
    tf.DynamicCache, tf.StaticCache = DynamicCache, StaticCache
    monkeypatch.setitem(sys.modules, "transformers", tf)
    StaticCache.made = []

    def make_kv_cache(kv, config, budget=None, model=None, **kw):
        log.kv.append((kv, budget, model is not None))
        return DynamicCache(config, budget=budget if kv in BK.EVICT else None), f"{kv} cache (budget {budget})"

    monkeypatch.setattr(KV, "make_kv_cache", make_kv_cache)
    monkeypatch.setattr(ENV, "_NVML", NVML())

    dg = types.ModuleType("measurement.decode_graph")

    def compile_layer(mode, cdt=False):
        log.graph.append(("compile_layer", mode, cdt))
        return f"layer<{mode},{cdt}>"

    class GraphDecoder:
        def __init__(self, model, cache, batch, *, layer_fn=None, graph=True, fuse=False, dynamic_len=False):
            self.args = dict(batch=batch, layer_fn=layer_fn, graph=graph, fuse=fuse, dynamic_len=dynamic_len)
            self.use_graph, self.steps, self.resets, self.captured = graph, 0, [], 0
            log.graph.append(("decoder", self.args))

        def reset(self, tok0, pos, slot):
            self.resets.append((tok0.shape, pos, slot))

        def capture(self):
            self.captured += 1

        def step(self):
            self.steps += 1

    dg.compile_layer, dg.GraphDecoder = compile_layer, GraphDecoder
    monkeypatch.setitem(sys.modules, "measurement.decode_graph", dg)
    monkeypatch.setattr(measurement, "decode_graph", dg, raising=False)
    return log


def _ctx(model):
    return NS(model=model, config="cfg", device=NS(type="cpu"), compiled=None, compiled_once=False)


def _ids(batch, prompt):
    return _t(np.tile(np.arange(prompt) % V, (batch, 1)))


def test_eager_prefill_in_chunks_decode_and_reset(fk):
    m, be = Model(), BK.EagerBackend()
    rc = RunConfig(model="m", backend="eager", batch=256, prompt_len=150, gen_len=5)
    assert BK.prefill_chunk(rc) == 64
    old = DynamicCache()
    state = {"cache": old}
    w = be.prefill(_ctx(m), rc, _ids(256, 150), state)
    assert old.detached == 1  # the previous config's cache let go first
    assert m.calls == [(64, None, 1), (64, None, 1), (22, None, 1)]  # 150 tokens in chunks of 64
    cache = state["cache"]
    assert isinstance(cache, DynamicCache) and state["notes"] == "DynamicCache" and cache.tokens() == list(range(150))
    assert state["tok0"].shape == (256, 1) and (np.asarray(state["tok0"]) == 150).all()
    assert w.energy_j == 1.0 and w.seconds >= 0 and w.sm_clock_mhz == 1980
    m.calls.clear()
    w = be.decode(_ctx(m), rc, state)
    assert m.calls == [(1, None, None)] * 5 and w.energy_j == 1.0
    assert cache.tokens() == list(range(155))  # greedy: each step feeds the token it predicted
    be.reset(rc, state)
    assert cache.tokens() == list(range(150)) and cache.layers[1].values.shape[2] == 150
    assert be.can_reuse(rc)


def test_eager_with_our_kv_cache(fk):
    m, be = Model(), BK.EagerBackend()
    rc = RunConfig(model="m", backend="eager", kv="kv-int4", prompt_len=40, gen_len=3)
    state = {}
    be.prefill(_ctx(m), rc, _ids(1, 40), state)
    cache = state["cache"]
    assert fk.kv == [("kv-int4", None, True)] and state["notes"] == "kv-int4 cache (budget None)"
    assert cache.detached == 1  # query hooks let go once the prompt is in
    assert not be.can_reuse(rc)
    rc = RunConfig(model="m", backend="eager", kv="snapkv", kv_budget=16, prompt_len=40, gen_len=3)
    be.prefill(_ctx(m), rc, _ids(1, 40), state)
    assert cache.detached == 2 and state["cache"] is not cache  # a fresh cache per prefill
    assert m.calls[-1] == (40, None, 1) and state["cache"].tokens() == list(range(24, 40))


def test_compiled_evicting_prefill_into_a_static_cache(fk):
    m, be = Model(), BK.CompiledBackend(BK.BackendConfig("compiled", "reduce-overhead"))
    rc = RunConfig(model="m", kv="snapkv", kv_budget=32, batch=2, prompt_len=100, gen_len=4,
                   compile_mode="reduce-overhead")
    assert be.check(rc) is None
    ctx, state = _ctx(m), {}
    w = be.prefill(ctx, rc, _ids(2, 100), state)
    (static,) = StaticCache.made
    assert static.max_cache_len == 32 + 4 and state["kept"] == 32 and w.energy_j == 1.0
    assert state["notes"] == "StaticCache filled from snapkv cache (budget 32)" and fk.kv == [("snapkv", 32, True)]
    assert m.calls == [(100, None, 1)]  # SnapKV scores the whole prompt: one forward
    assert static.tokens() == list(range(68, 100))  # the 32 kept positions copied in
    m.calls.clear()
    be.decode(ctx, rc, state)
    # true positions from the prompt length on, written after the kept tokens
    assert m.calls == [(1, 100, None), (1, 101, None), (1, 102, None), (1, 103, None)]
    assert static.tokens() == list(range(68, 104))
    assert fk.compiles == ["reduce-overhead"] and len(fk.marks) == 4 and ctx.compiled_once
    # batch 2 is not the reference shape: token and cache marked dynamic (batch dim; cache length too)
    assert fk.dynamic[0] == ((2, 1), 0) and ((2, 1, 36, 1), 2) in fk.dynamic and len(fk.dynamic) == 1 + 2 * 2 * 2
    be.reset(rc, state)
    assert static.tokens() == list(range(68, 100))
    be.decode(ctx, rc, state)
    assert fk.compiles == ["reduce-overhead"] and len(fk.dynamic) == 9  # compiled and marked once per model
    # the next prefill reuses the StaticCache, rewound to empty before the eviction cache is copied in
    be.prefill(ctx, rc, _ids(2, 100) + 1, state)
    assert StaticCache.made == [static] and static.tokens() == list(range(69, 101))


def test_compiled_reference_shape_and_plain_prefill(fk):
    m, be = Model(), BK.CompiledBackend()
    rc = RunConfig(model="m", batch=1, prompt_len=512, gen_len=2, compile_mode="default")
    ctx, state = _ctx(m), {}
    be.prefill(ctx, rc, _ids(1, 512), state)
    (static,) = StaticCache.made
    assert static.max_cache_len == 514 and state["notes"] == "StaticCache" and state["kept"] == 512
    be.decode(ctx, rc, state)
    assert static.tokens() == list(range(514)) and fk.compiles == ["default"]
    assert fk.marks == [] and fk.dynamic == []  # no CUDA graphs in "default"; the reference shape stays static
    rc0 = RunConfig(model="m", batch=1, prompt_len=512, gen_len=2, compile_mode="none")
    step = be.compiled_step(ctx, "none")
    assert ctx.compiled == ("none", step) and fk.compiles == ["default"]  # "none": the plain step, not compiled
    be.reset(rc0, state)
    be.decode(ctx, rc0, state)
    assert static.tokens() == list(range(514))


def test_mark_dynamic_without_dynamo_support(fk):
    sys.modules["torch"]._dynamo = NS()
    BK._mark_dynamic(_t(np.zeros((2, 1))), NS(layers=[]))
    assert fk.dynamic == []
    sys.modules["torch"]._dynamo = NS(maybe_mark_dynamic=lambda t, dim: fk.dynamic.append(dim))
    L = NS(keys=_t(np.zeros((2, 1, 8, 1))), values=None)
    BK._mark_dynamic(_t(np.zeros((2, 1))), NS(layers=[L]))
    assert fk.dynamic == [0, 0, 2]  # the token's batch; the keys' batch and length; no values tensor


@pytest.mark.parametrize("mode,compile_mode,cdt,graph,fuse", [
    ("regional-graph-fused-cdt", "default", True, True, True),
    ("regional-eager", "none", False, False, False)])
def test_regional_decoder_built_once_per_state(fk, mode, compile_mode, cdt, graph, fuse):
    m, be = Model(), BK.CompiledBackend()
    rc = RunConfig(model="m", batch=4, prompt_len=64, gen_len=3, compile_mode=mode)
    ctx, state = _ctx(m), {}
    be.prefill(ctx, rc, _ids(4, 64), state)
    w1 = be.decode(ctx, rc, state)
    w2 = be.decode(ctx, rc, state)
    assert fk.graph[0] == ("compile_layer", compile_mode, cdt) and len(fk.graph) == 2
    args = fk.graph[1][1]
    # not the reference shape and the model's first regional config: the cache length compiled as a symbol
    assert args == dict(batch=4, layer_fn=f"layer<{compile_mode},{cdt}>", graph=graph, fuse=fuse, dynamic_len=True)
    dec = state["decoder"]
    assert dec.captured == (1 if graph else 0) and dec.steps == 6 and dec.resets == [((4, 1), 64, 64)] * 3
    assert ctx.compiled == (mode, f"layer<{compile_mode},{cdt}>") and isinstance(state["capture_s"], float)
    assert w1.energy_j == w2.energy_j == 1.0
    # a new state (next config) with the same mode reuses the compiled layer function: no recompile
    state2 = {}
    be.prefill(ctx, rc, _ids(4, 64), state2)
    be.decode(ctx, rc, state2)
    assert [g[0] for g in fk.graph] == ["compile_layer", "decoder", "decoder"]
    assert fk.graph[2][1]["dynamic_len"] is False
