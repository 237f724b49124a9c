"""measurement.llamacpp.machine without a GPU: nvidia-smi parsing, the NVML energy sampler on a fake
pynvml, and the peak arithmetic of measure_peaks on a fake torch."""
from __future__ import annotations

import sys
import time
import types

import pytest

from measurement.llamacpp import machine as MA


def test_sh_returns_output_or_the_error():
    assert MA.sh("echo hello") == "hello"
    assert MA.sh("sleep 5", timeout=0.2).startswith("ERR ")


def test_gpu_facts_from_nvidia_smi(monkeypatch):
    smi = ("NVIDIA H200, GPU-aaa, 570.124.06, 143771 MiB, 700.00 W, 1980 MHz\n"
           "NVIDIA H200, GPU-bbb, 570.124.06, 143771 MiB, 700.00 W, 1980 MHz")
    monkeypatch.setattr(MA, "sh", lambda cmd, timeout=30: smi if cmd.startswith("nvidia-smi") else "Cuda 12.8, V12.8.93")
    f = MA.gpu_facts()
    assert (f["gpu_name"], f["gpu_uuid"], f["driver"], f["n_gpus"]) == ("NVIDIA H200", "GPU-aaa", "570.124.06", 2)
    assert f["nvidia_smi"] == smi and f["cuda"].endswith("Cuda 12.8, V12.8.93")
    monkeypatch.setattr(MA, "sh", lambda cmd, timeout=30: "")  # no nvidia-smi at all
    f = MA.gpu_facts()
    assert f["gpu_name"] == "" and f["gpu_uuid"] == "" and f["n_gpus"] == 1


def _fake_pynvml(watts=(500.0, 300.0), fail_after=None):
    """Counters that rise at ``watts`` W; GPU 1's fails after ``fail_after`` reads."""
    t0 = time.time()
    reads = [0, 0]
    m = types.ModuleType("pynvml")
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetCount = lambda: len(watts)
    m.nvmlDeviceGetHandleByIndex = lambda i: i

    def energy(h):
        reads[h] += 1
        if h == 1 and fail_after is not None and reads[h] > fail_after:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return (time.time() - t0) * watts[h] * 1000.0  # mJ

    m.nvmlDeviceGetTotalEnergyConsumption = energy
    return m


def _until(cond, timeout=5.0):
    end = time.time() + timeout
    while not cond() and time.time() < end:
        time.sleep(0.01)


def test_energy_sampler_power_of_one_and_two_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    s = MA.EnergySampler(period=0.005)
    assert s.ok and len(s.samples) == 2
    s.start()
    _until(lambda: min(len(x) for x in s.samples) > 5 and s.samples[1][-1][0] - s.samples[0][0][0] > 0.05)
    s.stop()
    s.join(2)
    assert not s.is_alive()
    # a window inside both GPUs' samples: the interpolated counters give the exact power
    t0 = max(x[0][0] for x in s.samples) + 0.01
    t1 = min(x[-1][0] for x in s.samples)
    assert t1 > t0
    assert s.power(t0, t1) == pytest.approx(500.0, rel=1e-3)
    assert s.power(t0, t1, 2) == pytest.approx(800.0, rel=1e-3)
    assert s.power(t1, t0) is None and s.power(t0 - 100, t1) is None  # reversed, or before the first sample


def test_energy_sampler_degrades_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    s = MA.EnergySampler()
    assert not s.ok and s.samples == [] and s.power(0, 1) is None
    s.run()  # returns at once: nothing to sample
    # a GPU whose counter fails mid-run keeps the others' samples
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail_after=3))  # 1 read at start, 2 sampled
    s = MA.EnergySampler(period=0.005)
    s.start()
    _until(lambda: len(s.samples[0]) > 4)
    s.stop()
    s.join(2)
    assert len(s.samples[1]) == 2 and len(s.samples[0]) > 2


class _T:
    def normal_(self):
        return self

    def copy_(self, other):
        return self

    def sum(self, dtype=None):
        return self

    def __matmul__(self, other):
        return self


def test_measure_peaks_arithmetic_on_a_fake_torch(monkeypatch):
    torch = types.ModuleType("torch")
    torch.bfloat16, torch.float32 = "bf16", "f32"
    torch.empty = lambda *a, **k: _T()
    torch.empty_like = lambda x: _T()
    torch.randn = lambda *a, **k: _T()
    torch.cuda = types.SimpleNamespace(empty_cache=lambda: None)
    monkeypatch.setitem(sys.modules, "torch", torch)
    import measurement.roofline as RF

    times = iter([2e-3, 1e-3, 4e-3])  # copy, sum, matmul

    def bench(fn, iters=20):
        fn()
        return next(times)

    monkeypatch.setattr(RF, "_bench", bench)
    logs = []
    p = MA.measure_peaks(logs.append)
    n = 1 << 30
    assert p["copy_bw_gbps"] == pytest.approx(2 * n * 2 / 2e-3 / 1e9)  # read + write of 2 GiB bf16
    assert p["read_bw_gbps"] == pytest.approx(n * 2 / 1e-3 / 1e9)
    assert p["peak_tflops_bf16"] == pytest.approx(2 * 8192 ** 3 / 4e-3 / 1e12)
    assert logs and logs[0].startswith("peaks: copy 2147 GB/s")
