"""measurement.backends, the parts that need no GPU: prefill chunking, which configs each backend refuses,
KV bytes and stored tokens of a cache, and the compiled step's cache per compile mode."""
from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np

from measurement import backends as BK
from measurement.store import RunConfig


def test_prefill_chunk():
    assert BK.prefill_chunk(RunConfig(model="m", batch=1, prompt_len=512)) == 512
    assert BK.prefill_chunk(RunConfig(model="m", batch=4, prompt_len=8192)) == BK.PREFILL_CHUNK_TOKENS // 4
    assert BK.prefill_chunk(RunConfig(model="m", batch=1024, prompt_len=8192)) == 64  # floor
    assert BK.prefill_chunk(RunConfig(model="m", batch=64, prompt_len=8192, kv="snapkv", kv_budget=256)) == 8192


def test_backend_refusals():
    eager, comp = BK.EagerBackend(), BK.CompiledBackend()
    assert eager.cfg.name == "eager" and comp.cfg.name == "compiled"
    for kv in ("kv-fp16", "kv-int4", "pyramidkv", "snapkv"):
        assert eager.check(RunConfig(model="m", kv=kv, backend="eager")) is None
    assert "quantized KV" in comp.check(RunConfig(model="m", kv="kv-int8"))
    assert "per-layer KV budgets" in comp.check(RunConfig(model="m", kv="pyramidkv", kv_budget=64))
    assert comp.check(RunConfig(model="m")) is None
    assert eager.can_reuse(RunConfig(model="m")) and not eager.can_reuse(RunConfig(model="m", kv="kv-int8"))
    assert comp.can_reuse(RunConfig(model="m", kv="snapkv"))
    assert BK._reference_shape(RunConfig(model="m")) and not BK._reference_shape(RunConfig(model="m", batch=2))
    assert set(BK.FUSED_MODES) <= set(BK.GRAPH_MODES) <= set(BK.REGIONAL_MODES)


def test_cache_bytes_and_stored_tokens():
    assert BK.cache_nbytes(None) == 0
    assert BK.cache_nbytes(NS(nbytes=lambda: 123)) == 123
    k = np.zeros((1, 2, 10, 4), dtype=np.float16)
    layer = NS(keys=NS(numel=lambda: k.size, element_size=lambda: 2), values=NS(numel=lambda: k.size,
                                                                               element_size=lambda: 2))
    assert BK.cache_nbytes(NS(layers=[layer, layer, NS(keys=None, values=None)])) == 2 * 2 * 80 * 2
    assert BK._stored(NS(stored_tokens=lambda: [10, 11, 11])) == 10.7
    assert BK._stored(NS(stored_tokens=lambda: [])) is None and BK._stored(object()) is None


def test_compiled_step_is_kept_per_mode(monkeypatch):
    ctx = NS(compiled=None, model=lambda **kw: None)
    comp = BK.CompiledBackend()
    try:
        import torch  # noqa: F401
    except ImportError:
        import sys
        import types
        monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    f = comp.compiled_step(ctx, "none")  # no torch.compile: the plain step
    assert ctx.compiled == ("none", f) and comp.compiled_step(ctx, "none") is f
