"""The harness end to end on CPU with a tiny Llama: measure, store, resume, OOM and unsupported rows."""
import json

import pytest
import torch

from measurement import scenario
from measurement.backends import EagerBackend
from measurement.prepare import ModelContext
from measurement.runner import Runner
from measurement.scenario import Scenario, add_roofline, flags_for
from measurement.store import RowStore, RunConfig
from measurement.testing import tiny_config


def _rc(**kw):
    d = dict(model="tiny", backend="eager", batch=2, prompt_len=32, gen_len=4, trials=2, compile_mode="none")
    d.update(kw)
    return RunConfig(**d)


def _runner(out, **kw):
    return Runner(out, device="cpu", config_override=tiny_config(), **kw)


def test_measure_and_store(tmp_path):
    rows = _runner(tmp_path).run([_rc(), _rc(backend="compiled")])
    assert [r["status"] for r in rows] == ["ok", "ok"]
    r = rows[0]
    for k in ("decode_ms_per_token", "decode_tok_s", "prefill_ms", "weights_gb", "kv_gb", "decode_trials_ms",
              "key", "gpu", "torch", "transformers", "git_commit", "code_sha", "date_utc", "config_json"):
        assert r.get(k) is not None, k
    assert len(r["decode_trials_ms"]) == 2 and r["n_trials"] == 2
    stored = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [s["key"] for s in stored] == [x["key"] for x in rows]
    assert r["key"].startswith("gpu=cpu|model=tiny|precision=bf16")


def test_methods_rows(tmp_path):
    cfgs = [_rc(precision="bnb-nf4"), _rc(sparsity="2:4-magnitude"), _rc(sparsity="drop-1"),
            _rc(kv="kv-int4"), _rc(kv="snapkv", kv_budget=16), _rc(kv="streamingllm", kv_budget=16, backend="compiled"),
            _rc(kv="kv-int4", backend="compiled"), _rc(precision="fp8", sparsity="2:4-magnitude")]
    rows = {(r["precision"], r["sparsity"], r["kv"], r["backend"]): r for r in _runner(tmp_path).run(cfgs)}
    assert rows[("bnb-nf4", "dense", "kv-fp16", "eager")]["status"] == "unsupported"
    assert "CUDA" in rows[("bnb-nf4", "dense", "kv-fp16", "eager")]["reason"]
    assert rows[("bf16", "2:4-magnitude", "kv-fp16", "eager")]["status"] == "ok"
    d = rows[("bf16", "drop-1", "kv-fp16", "eager")]
    assert d["status"] == "ok" and d["num_layers"] == 1
    assert rows[("bf16", "dense", "kv-int4", "eager")]["status"] == "ok"
    s = rows[("bf16", "dense", "snapkv", "eager")]
    assert s["status"] == "ok" and s["kv_stored_tokens"] <= 16 + 4
    assert rows[("bf16", "dense", "streamingllm", "compiled")]["status"] == "ok"
    assert rows[("bf16", "dense", "kv-int4", "compiled")]["status"] == "unsupported"
    assert "fp16/bf16 only" in rows[("fp8", "2:4-magnitude", "kv-fp16", "eager")]["reason"]


def test_resume_after_interruption(tmp_path):
    cfgs = [_rc(batch=b) for b in (1, 2, 3)]
    calls = {"n": 0}
    orig = Scenario.run

    def flaky(self, ctx, backend):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process dies in the middle of the second config
        return orig(self, ctx, backend)

    Scenario.run = flaky
    try:
        with pytest.raises(KeyboardInterrupt):
            _runner(tmp_path).run(cfgs)
    finally:
        Scenario.run = orig
    store = RowStore(tmp_path)
    assert len(store.rows()) == 1
    finished = store.rows()[0]["batch"]
    # a torn last line (hard kill while writing) is ignored
    with open(store.path, "a") as fh:
        fh.write('{"key": "torn')
    rows = _runner(tmp_path).run(cfgs)
    assert sorted(r["batch"] for r in rows) == sorted({1, 2, 3} - {finished})  # the finished row is not redone
    again = _runner(tmp_path).run(cfgs)
    assert again == []
    keys = [r["key"] for r in store.rows()]
    assert len(keys) == len(set(keys)) == 3


def test_oom_is_a_row(tmp_path, monkeypatch):
    def boom(self, ctx, rc, state):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(EagerBackend, "decode", boom)
    rows = _runner(tmp_path).run([_rc(batch=64), _rc(batch=1, backend="compiled")])
    by = {r["backend"]: r for r in rows}
    assert by["eager"]["status"] == "does_not_fit" and "out of memory" in by["eager"]["reason"]
    assert by["compiled"]["status"] == "ok"  # the sweep goes on


def test_error_row_and_retry_once(tmp_path, monkeypatch):
    def bad(self, ctx, rc, state):
        raise RuntimeError("weird")

    monkeypatch.setattr(EagerBackend, "decode", bad)
    r = _runner(tmp_path).run([_rc()])
    assert r[0]["status"] == "error"
    r = _runner(tmp_path).run([_rc()])
    assert len(r) == 1  # retried once
    assert _runner(tmp_path).run([_rc()]) == []


def test_deadline_stops_new_configs(tmp_path):
    import time

    rows = _runner(tmp_path, deadline=time.time() - 1).run([_rc()])
    assert rows == []


def test_roofline_fraction_and_flags():
    peaks = {"copy_bw_gbps": 1000.0, "matmul_tflops_bf16": 100.0}
    cfg = tiny_config()
    ctx = ModelContext(None, cfg, "random", 1e6, 1e6, 1e5, torch.device("cpu"))
    row = {"decode_ms_per_token": 0.5, "prefill_ms": 1.0}
    add_roofline(row, ctx, _rc(), peaks)
    assert 0 < row["decode_roofline_frac"] < 1 and row["roofline_decode_bound"] == "memory"
    row2 = {"decode_ms_per_token": 1e-6, "prefill_ms": 1.0, "decode_spread_pct": 5.0}
    add_roofline(row2, ctx, _rc(), peaks)
    flags = flags_for(row2)
    assert "BUG_decode_roofline_frac_gt_1" in flags and "decode_spread_gt_3pct" in flags


def test_static_decode_matches_dynamic():
    """The compiled backend's StaticCache path (uncompiled here) gives the eager tokens."""
    from transformers import DynamicCache, StaticCache

    from measurement.build import build_random

    cfg = tiny_config()
    m = build_random(cfg, dtype=torch.float32, device="cpu", std=0.2)
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))

    def run(cache, static):
        t = m(ids, past_key_values=cache).logits[:, -1:].argmax(-1)
        out, pos = [t], torch.full((1, 1), 40)
        for _ in range(8):
            kw = {"position_ids": pos} if static else {}
            t = m(t, past_key_values=cache, **kw).logits[:, -1:].argmax(-1)
            out.append(t)
            pos += 1
        return torch.cat(out, 1)

    assert torch.equal(run(DynamicCache(config=cfg), False), run(StaticCache(config=cfg, max_cache_len=48), True))


def test_cache_tensors_made_as_on_cuda(tmp_path, monkeypatch):
    """On CUDA the StaticCache tensors are created inside inference mode (lazy init moves them to the GPU);
    emulate that on CPU so that any in-place update outside inference mode fails here too."""
    from transformers.cache_utils import StaticLayer

    orig = StaticLayer.lazy_initialization

    def lazy(self, k, v):
        orig(self, k, v)
        with torch.inference_mode():
            self.cumulative_length = self.cumulative_length.clone()
            self.keys, self.values = self.keys.clone(), self.values.clone()

    monkeypatch.setattr(StaticLayer, "lazy_initialization", lazy)
    monkeypatch.setattr(scenario, "PREFILL_REPEAT_TOKENS", 40)
    cfgs = [_rc(backend="compiled", batch=1, prompt_len=16), _rc(backend="compiled", batch=2, prompt_len=32),
            _rc(backend="compiled", kv="snapkv", kv_budget=8, batch=2, prompt_len=32),
            _rc(backend="eager", batch=2, prompt_len=32)]
    rows = _runner(tmp_path).run(cfgs)
    assert [r["status"] for r in rows] == ["ok"] * 4, [r.get("reason") for r in rows]


def test_slow_prefill_is_timed_once(tmp_path, monkeypatch):
    """A first prefill slower than SLOW_PREFILL_S is not repeated per trial where the backend can restart
    decode from its KV; a cache that cannot restart (a quantized one, eager) still repeats it."""
    monkeypatch.setattr(scenario, "SLOW_PREFILL_S", 0.0)
    cfgs = [_rc(backend="compiled", batch=1, prompt_len=16, trials=3, compile_mode="regional-eager"),
            _rc(backend="eager", kv="kv-int8", batch=1, prompt_len=16, trials=3)]
    rows = _runner(tmp_path).run(cfgs)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("reason") for r in rows]
    assert [len(r["prefill_trials_ms"]) for r in rows] == [1, 3]
    assert [len(r["decode_trials_ms"]) for r in rows] == [3, 3]
