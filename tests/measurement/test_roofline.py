"""measurement.roofline without a GPU: bytes and FLOPs per step, the bound, and how the machine's peaks
are measured (fake torch: CUDA events and matmul timings) and shared between processes through
ADVISOR_PEAKS_FILE."""
from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace as NS

import pytest

from measurement import roofline as R

CFG = NS(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=16, head_dim=64)


def test_step_costs():
    kv = R.kv_bytes_per_token(CFG)
    assert kv == 2 * 16 * 8 * 64 * 2
    assert R.kv_bytes_per_token(CFG, "kv-int4") == pytest.approx(kv / 2 * (0.5 + 4 / 64))
    assert R.kv_bytes_per_elem("kv-fp8") == pytest.approx(1 + 2 / 64) and R.kv_bytes_per_elem("snapkv") == 2.0
    d = R.decode_cost(CFG, batch=4, ctx=1000, step_weight_bytes=2e9, matmul_params=1e9)
    assert d.kv_bytes == 4 * 1000 * kv and d.bytes == 2e9 + d.kv_bytes
    assert d.flops == pytest.approx(2e9 * 4 + 4 * 4.0 * 1000 * 16 * 32 * 64)
    p = R.prefill_cost(CFG, batch=2, prompt=512, step_weight_bytes=2e9, matmul_params=1e9)
    assert p.flops == pytest.approx(2e9 * 2 * 512 + 2.0 * 2 * 512 * 512 * 16 * 32 * 64)
    assert p.kv_bytes == 2 * 512 * kv and R.as_dict(p)["weight_bytes"] == 2e9
    assert R.attn_flops_per_token(NS(hidden_size=4096, num_attention_heads=32, num_hidden_layers=1), 1) == 4 * 32 * 128


def test_roofline_bound_and_dtype():
    c = R.StepCost(bytes=4e9, flops=1e12, weight_bytes=4e9, kv_bytes=0)
    peaks = {"copy_bw_gbps": 4000.0, "matmul_tflops_bf16": 500.0, "matmul_tflops_fp8": 2000.0}
    assert R.roofline_ms(c, peaks) == (pytest.approx(2.0), "compute")  # 1 ms of bytes, 2 ms of FLOPs
    assert R.roofline_ms(c, peaks, "fp8") == (pytest.approx(1.0), "memory")
    assert R.roofline_ms(c, peaks, "int8")[0] == pytest.approx(2.0)  # no int8 peak: the bf16 one
    assert R.roofline_ms(c, {"copy_bw_gbps": 4000.0}) == (None, None)
    assert [R.matmul_dtype(p) for p in ("fp8", "w8a8", "awq-int4")] == ["fp8", "int8", "bf16"]


def test_harness_blocks_name_registered_implementations():
    """Every methods.yaml ``harness`` block names an implementation (and parameters) the harness has; the
    precisions and KV policies it runs are the ones engines.yaml's harness engine does not list as not_run."""
    from measurement import kv_cache as K
    from measurement import precision as P
    from measurement import sparsity as S
    from profiles import load

    cat = load()
    for kind, mod in (("precision", P), ("sparsity", S), ("kv", K)):
        for mid, h in ((m.id, m.get("harness")) for m in cat.methods_of(kind) if m.get("harness")):
            assert h["impl"] in mod.IMPLEMENTATIONS, (mid, h)
            assert h["impl"] != "torchao" or h["config"] in P.TORCHAO, (mid, h)
            assert h["impl"] != "bitsandbytes" or h["layer"] in P.BNB, (mid, h)
            assert h["impl"] != "cast" or cat.methods[mid].get("torch_dtype"), mid
            assert not h.get("codes") or h["codes"] in K.FLOAT_CODES, (mid, h)
    harness = next(e for e in cat.engines.values() if e.runs_everything)
    for kind, ran in (("precision", P.PRECISIONS), ("kv", K.KV_POLICIES)):
        assert list(ran) == [m.id for m in cat.methods_of(kind) if m.id not in harness.get("not_run")]
    # the harness's integer caches store what the catalog says (codes + fp16 scale and zero per group of 64); its
    # fp8 cache keeps a scale per group, where the catalog's (vLLM) fp8 cache has one per tensor
    for kv in K.KV_QUANT:
        m = cat.methods[kv]
        assert (R.kv_bytes_per_elem(kv) == m.get("bytes_per_kv_elem")) == (m.get("kv_dequant") == "int"), kv


class _Ev:
    t = 0.0

    def __init__(self, enable_timing):
        assert enable_timing

    def record(self):
        _Ev.t += 1.0
        self.at = _Ev.t

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return other.at - self.at


class _T:
    def __init__(self, n=1):
        self.n = n

    def normal_(self):
        return self

    def numel(self):
        return self.n

    def element_size(self):
        return 2

    def copy_(self, o):
        return self

    def __matmul__(self, o):
        return self

    def to(self, dtype):
        return self

    def t(self):
        return self

    def contiguous(self):
        return self


def _fake_torch(cuda=True, fp8=True):
    t = types.ModuleType("torch")
    t.bfloat16, t.int8, t.float8_e4m3fn = "bf16", "int8", "fp8"
    t.cuda = NS(is_available=lambda: cuda, synchronize=lambda: None, Event=_Ev, empty_cache=lambda: None)
    t.empty = lambda n, **k: _T(n)
    t.empty_like = lambda x: _T(x.n)
    t.randn = lambda *a, **k: _T()
    t.ones = lambda *a, **k: _T()
    t.randint = lambda *a, **k: _T()
    if fp8:
        t._scaled_mm = lambda *a, **k: None
    t._int_mm = lambda a, b: None
    return t


def test_event_times_and_measured_peaks(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch())
    calls = []
    ts = R.event_times_ms(lambda: calls.append(1), iters=4, warm=2)
    assert ts == [1.0] * 4 and len(calls) == 6
    times = iter([2e-3, 4e-3, 1e-3, 3e-3])  # copy, bf16, fp8, int8 (seconds per call)
    monkeypatch.setattr(R, "_bench", lambda fn, iters=20: (fn(), next(times))[1])
    p = R.measure_peaks()
    M = 8192
    assert p["copy_bw_gbps"] == pytest.approx(2 * (1 << 30) * 2 / 2e-3 / 1e9)
    assert p["matmul_tflops_bf16"] == pytest.approx(2 * M ** 3 / 4e-3 / 1e12)
    assert p["matmul_tflops_fp8"] == pytest.approx(2 * M ** 3 / 1e-3 / 1e12)
    assert p["matmul_tflops_int8"] == pytest.approx(2 * M ** 3 / 3e-3 / 1e12)
    # a GPU without fp8 matmuls: that peak stays None, the others are measured
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(fp8=False))
    times = iter([2e-3, 4e-3, 3e-3])
    p = R.measure_peaks()
    assert p["matmul_tflops_fp8"] is None and p["matmul_tflops_int8"] is not None
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda=False))
    assert set(R.measure_peaks().values()) == {None}


def test_median_of_event_times(monkeypatch):
    monkeypatch.setattr(R, "event_times_ms", lambda fn, iters, warm: [3.0, 1.0, 2.0])
    assert R._bench(lambda: None) == pytest.approx(0.002)


def test_machine_peaks_are_shared_through_a_file(monkeypatch, tmp_path):
    f = tmp_path / "peaks.json"
    monkeypatch.setenv("ADVISOR_PEAKS_FILE", str(f))
    monkeypatch.setattr(R, "_PEAKS", None)
    n = []
    monkeypatch.setattr(R, "measure_peaks", lambda: n.append(1) or {"copy_bw_gbps": 4100.0})
    assert R.machine_peaks() == {"copy_bw_gbps": 4100.0} and json.loads(f.read_text()) == {"copy_bw_gbps": 4100.0}
    assert R.machine_peaks() is R._PEAKS and n == [1]  # once per process
    monkeypatch.setattr(R, "_PEAKS", None)
    f.write_text(json.dumps({"copy_bw_gbps": 999.0}))  # another process of the run measured it
    assert R.machine_peaks() == {"copy_bw_gbps": 999.0} and n == [1]
    monkeypatch.setattr(R, "_PEAKS", None)
    f.write_text("{torn")  # unreadable: measured again
    assert R.machine_peaks() == {"copy_bw_gbps": 4100.0} and n == [1, 1]
    monkeypatch.setattr(R, "_PEAKS", None)
    monkeypatch.setenv("ADVISOR_PEAKS_FILE", str(tmp_path / "no" / "dir" / "p.json"))  # cannot be written
    assert R.machine_peaks() == {"copy_bw_gbps": 4100.0}


def test_host_launch_probe_times_the_host_per_op():
    torch = pytest.importorskip("torch")
    us = R.host_launch_us("cpu", n=500, repeats=3)
    # a one-element in-place add dispatched from Python: more than a nanosecond, far less than a millisecond
    assert 0.001 < us < 1000
    assert torch.zeros(1).add_(1).item() == 1.0  # the probe leaves torch usable
