"""measurement.scenario without a GPU: the trial protocol of Scenario._run on a fake backend (which prefills
are repeated, how many trials a slow config gets), the medians of summarize, the roofline columns and the
row flags. A fake clock stands in for time.perf_counter."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace as NS

import pytest

from measurement import scenario as S
from measurement.roofline import kv_bytes_per_token
from measurement.store import RunConfig


@pytest.fixture
def torch_stub(monkeypatch):
    """Scenario._run imports torch but only uses it on a CUDA device: a stub suffices where torch is absent."""
    try:
        import torch  # noqa: F401
    except ImportError:
        import contextlib

        t = types.ModuleType("torch")
        t.Generator = lambda: NS(manual_seed=lambda s: ("gen", s))
        t.randint = lambda lo, hi, shape, generator: NS(to=lambda dev: ("ids", lo, hi, shape, generator, dev))
        t.inference_mode = contextlib.nullcontext
        monkeypatch.setitem(sys.modules, "torch", t)


class Clock:
    def __init__(self):
        self.t = 0.0

    def perf_counter(self):
        return self.t


class Cache:
    def __init__(self):
        self.detached = False

    def nbytes(self):
        return 3_000_000_000

    def stored_tokens(self):
        return [100, 101]

    def detach(self):
        self.detached = True


class FakeBackend:
    """Prefill takes ``pre_s``, decode ``dec_s`` (+ ``first_extra`` s of compile/capture on the first call)."""

    def __init__(self, clock, pre_s=0.1, dec_s=0.2, reuse=True, first_extra=0.0):
        self.clock, self.pre_s, self.dec_s, self.reuse, self.first_extra = clock, pre_s, dec_s, reuse, first_extra
        self.calls = []
        self.cache = Cache()

    def _w(self, s, e):
        self.clock.t += s
        return NS(seconds=s, energy_j=e, avg_power_w=e / s, sm_clock_mhz=1900.0)

    def prefill(self, ctx, rc, ids, state):
        self.calls.append("prefill")
        state["cache"] = self.cache
        return self._w(self.pre_s, 50.0)

    def decode(self, ctx, rc, state):
        self.calls.append("decode")
        if "capture_s" not in state:
            state["capture_s"] = self.first_extra
            self.clock.t += self.first_extra
        state["notes"] = "fake cache"
        return self._w(self.dec_s, 100.0)

    def reset(self, rc, state):
        self.calls.append("reset")

    def can_reuse(self, rc):
        return self.reuse


def _run(monkeypatch, rc, **kw):
    clock = Clock()
    monkeypatch.setattr(S, "time", clock)
    be = FakeBackend(clock, **kw)
    ctx = NS(device="cpu")
    res = S.Scenario(rc)._run(ctx, be, ids=None)
    return res, be


def test_small_prompt_repeats_prefill_every_trial(monkeypatch, torch_stub):
    rc = RunConfig(model="m", batch=2, prompt_len=512, gen_len=100, trials=3, warmup=2)
    res, be = _run(monkeypatch, rc, first_extra=30.0)  # 30 s of compile on the first decode is not decode time
    assert be.calls == ["prefill", "decode", "reset", "decode", "reset"] + ["prefill", "decode"] * 3
    assert res["n_trials"] == 3 and len(res["prefill_trials_ms"]) == 3
    assert res["decode_ms_per_token"] == pytest.approx(2.0) and res["decode_tok_s"] == pytest.approx(1000.0)
    assert res["prefill_ms"] == pytest.approx(100.0) and res["prefill_tok_s"] == pytest.approx(2 * 512 * 10)
    assert res["ttft_ms"] == pytest.approx(102.0) and res["j_per_token"] == pytest.approx(100.0 / 200)
    assert res["capture_s"] == 30.0 and res["warmup_s"] == pytest.approx(30.0 + 0.1 + 2 * 0.2)
    assert res["kv_gb"] == 3.0 and res["kv_stored_tokens"] == 100.5 and res["cache_notes"] == "fake cache"
    assert res["prefill_chunk"] == 512 and be.cache.detached and "peak_mem_gb" not in res


def test_large_prompt_is_prefilled_once_and_reused(monkeypatch, torch_stub):
    rc = RunConfig(model="m", batch=16, prompt_len=4096, gen_len=10, trials=3)
    res, be = _run(monkeypatch, rc)
    assert be.calls == ["prefill", "decode", "reset"] + ["reset", "decode"] * 3
    assert res["prefill_trials_ms"] == [100.0] and res["prefill_spread_pct"] is None and res["n_trials"] == 3
    # a backend that cannot restart from a stored KV repeats the prefill instead
    res, be = _run(monkeypatch, rc, reuse=False)
    assert be.calls == ["prefill", "decode", "prefill"] + ["prefill", "decode"] * 3
    assert len(res["prefill_trials_ms"]) == 3


def test_slow_prefill_and_slow_decode_are_timed_once(monkeypatch, torch_stub):
    rc = RunConfig(model="m", batch=1, prompt_len=512, gen_len=16, trials=3)
    _, be = _run(monkeypatch, rc, pre_s=S.SLOW_PREFILL_S + 1)
    assert be.calls.count("prefill") == 1  # not repeated: its KV is reused
    res, be = _run(monkeypatch, rc, dec_s=S.SLOW_DECODE_S + 1)
    assert res["n_trials"] == 1 and be.calls.count("decode") == 2  # warm-up + one timed trial
    assert "one_trial_slow_decode" in S.flags_for(dict(res, status="ok", trials=3))


def test_summarize_medians_and_spread():
    rc = RunConfig(model="m", batch=4, prompt_len=100, gen_len=10)
    dec = [NS(seconds=s, avg_power_w=p, energy_j=e, sm_clock_mhz=c) for s, p, e, c in
           [(0.010, 400, 4.0, 1800), (0.011, 500, 5.0, 1900), (0.012, None, None, None)]]
    pre = [NS(seconds=0.05, energy_j=20.0)]
    r = S.summarize(pre, dec, rc)
    assert r["decode_ms_per_token"] == pytest.approx(1.1) and r["decode_spread_pct"] == pytest.approx(200 / 11)
    assert r["decode_trials_ms"] == [1.0, 1.1, 1.2] and r["prefill_spread_pct"] is None
    assert r["avg_power_w"] == 450 and r["j_per_token"] == pytest.approx(4.5 / 40) and r["sm_clock_mhz"] == 1850
    assert r["prefill_j"] == 20.0 and r["prefill_tok_s"] == pytest.approx(400 / 0.05)
    empty = S.summarize([], [], rc)
    assert empty["decode_ms_per_token"] is None and empty["ttft_ms"] is None and empty["n_trials"] == 0
    assert S.med_spread([None, None]) == (None, None) and S.med_spread([0.0, 0.0]) == (0.0, None)


CFG = NS(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32, head_dim=None)


def test_add_roofline_memory_bound_decode_and_eviction_budget():
    ctx = NS(config=CFG, step_weight_bytes=16e9, matmul_params=7e9)
    peaks = {"copy_bw_gbps": 4000.0, "matmul_tflops_bf16": 800.0, "matmul_tflops_fp8": 1600.0}
    rc = RunConfig(model="m", batch=1, prompt_len=1001, gen_len=1)
    row = {"decode_ms_per_token": 5.0, "prefill_ms": 40.0}
    S.add_roofline(row, ctx, rc, peaks)
    kv = kv_bytes_per_token(CFG)
    assert kv == 2 * 32 * 8 * 128 * 2
    assert row["decode_bytes_per_step"] == pytest.approx(16e9 + 1001 * kv)
    assert row["roofline_decode_ms"] == pytest.approx((16e9 + 1001 * kv) / 4e12 * 1000)
    assert row["roofline_decode_bound"] == "memory" and row["matmul_dtype"] == "bf16"
    assert row["decode_roofline_frac"] == pytest.approx(row["roofline_decode_ms"] / 5.0)
    assert row["roofline_prefill_bound"] == "compute"
    assert row["prefill_roofline_frac"] == pytest.approx(row["roofline_prefill_ms"] / 40.0)
    # an eviction policy reads at most its budget of cached tokens
    ev = {"decode_ms_per_token": None, "prefill_ms": None}
    S.add_roofline(ev, ctx, RunConfig(model="m", kv="snapkv", kv_budget=101, prompt_len=1001, gen_len=1,
                                      precision="fp8"), peaks)
    assert ev["decode_bytes_per_step"] == pytest.approx(16e9 + 101 * kv)
    assert ev["matmul_dtype"] == "fp8" and ev["decode_roofline_frac"] is None and ev["prefill_roofline_frac"] is None
    none = {}
    S.add_roofline(none, ctx, rc, {})
    assert none["roofline_decode_ms"] is None and none["roofline_decode_bound"] is None


def test_flags():
    assert S.flags_for({}) == []
    f = S.flags_for({"decode_spread_pct": 3.5, "prefill_spread_pct": 10, "decode_roofline_frac": 1.2,
                     "prefill_roofline_frac": 0.5, "status": "ok", "n_trials": 3, "trials": 3})
    assert f == ["decode_spread_gt_3pct", "prefill_spread_gt_3pct", "BUG_decode_roofline_frac_gt_1"]
    assert S.flags_for({"status": "error", "n_trials": 1, "trials": 3}) == []


def test_run_draws_random_prompt_tokens(monkeypatch, torch_stub):
    clock = Clock()
    monkeypatch.setattr(S, "time", clock)
    be = FakeBackend(clock)
    seen = []
    real = be.prefill

    def prefill(ctx, rc, ids, state):
        seen.append(ids)
        return real(ctx, rc, ids, state)

    be.prefill = prefill
    rc = RunConfig(model="m", batch=2, prompt_len=8, gen_len=4, trials=1)
    res = S.Scenario(rc).run(NS(device="cpu", config=NS(vocab_size=50)), be)
    assert res["n_trials"] == 1 and len(seen) == 2
    ids = seen[0]
    if isinstance(ids, tuple):  # the stub records what was asked for
        assert ids[1:4] == (0, 50, (2, 8)) and ids[4] == ("gen", 1234) and ids[5] == "cpu"
    else:
        assert tuple(ids.shape) == (2, 8) and int(ids.max()) < 50
        assert ids.equal(seen[1])  # the same prompt every trial
