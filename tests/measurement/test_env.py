"""measurement.env without a GPU: git commit and code hash, GPU profile ids, the NVML wrapper on a fake
pynvml, measurement windows and provenance on a fake torch (so the same assertions hold with or without
the real one installed)."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

from measurement import env as E


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch):
    monkeypatch.setattr(E, "_NVML", None)
    for f in (E.git_commit, E.provenance, E.code_sha):
        f.cache_clear()
    yield
    for f in (E.git_commit, E.provenance, E.code_sha):
        f.cache_clear()


def _pynvml(energy=(1000.0, 3500.0), fail=(), as_bytes=True):
    m = types.ModuleType("pynvml")
    seq = list(energy)
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"

    def call(name, value):
        def f(h, *a):
            if name in fail:
                raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
            m.calls.append((name, h, a))
            return value() if callable(value) else value
        return f

    m.calls = []
    m.nvmlDeviceGetTotalEnergyConsumption = call("energy", lambda: seq.pop(0) if len(seq) > 1 else seq[0])
    m.nvmlDeviceGetPowerUsage = call("power", 450_500)
    m.nvmlDeviceGetClockInfo = call("clock", 1980)
    m.nvmlDeviceGetTemperature = call("temp", 41)
    m.nvmlDeviceGetUUID = call("uuid", b"GPU-1234" if as_bytes else "GPU-1234")

    def driver():
        if "driver" in fail:
            raise RuntimeError("x")
        return b"570.124" if as_bytes else "570.124"

    m.nvmlSystemGetDriverVersion = driver
    return m


def _torch(cuda=True, name="NVIDIA H200"):
    t = types.ModuleType("torch")
    t.__version__ = "9.9.9"
    t.version = types.SimpleNamespace(cuda="12.8")
    syncs = []
    props = types.SimpleNamespace(name=name, total_memory=143_771 * 2 ** 20, major=9, minor=0, multi_processor_count=132)
    t.cuda = types.SimpleNamespace(is_available=lambda: cuda, synchronize=lambda: syncs.append(1),
                                   get_device_properties=lambda i: props)
    t.syncs = syncs
    return t


@pytest.mark.parametrize("name,gid", [("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"),
                                      ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100-80g-sxm"),
                                      ("NVIDIA A100-PCIE-40GB", "a100-40g-pcie"), ("NVIDIA L4", "l4"),
                                      ("Tesla T4", "t4"), ("NVIDIA GeForce RTX 4090", "rtx4090"), ("", "cpu"),
                                      ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada-generation")])
def test_gpu_profile_id(name, gid):
    assert E.gpu_profile_id(name) == gid


def test_version_and_code_sha():
    assert E._version("numpy") and E._version("no-such-distribution-xyz") is None
    s = E.code_sha()
    assert len(s) == 12 and int(s, 16) >= 0 and E.code_sha() == s


def test_git_commit_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVISOR_GIT_COMMIT", "feedc0de")
    assert E.git_commit() == "feedc0de"
    monkeypatch.delenv("ADVISOR_GIT_COMMIT")
    monkeypatch.setattr(E, "HERE", tmp_path / "measurement")
    (tmp_path / "measurement").mkdir()
    (tmp_path / "measurement" / ".git_commit").write_text("abc123\n")  # a copy without .git
    E.git_commit.cache_clear()
    assert E.git_commit() == "abc123"
    (tmp_path / "measurement" / ".git_commit").unlink()
    answers = {"rev-parse": "0123456789ab", "status": " M measurement/env.py"}

    def run(cmd, cwd, **kw):
        assert cwd == tmp_path
        return types.SimpleNamespace(stdout=answers[cmd[1]] + "\n")

    monkeypatch.setattr(E.subprocess, "run", run)
    E.git_commit.cache_clear()
    assert E.git_commit() == "0123456789ab+dirty"
    answers.update({"status": ""})
    E.git_commit.cache_clear()
    assert E.git_commit() == "0123456789ab"
    answers.update({"rev-parse": ""})  # not a git checkout
    E.git_commit.cache_clear()
    assert E.git_commit() == "unknown"

    def broken(*a, **k):
        raise subprocess.TimeoutExpired("git", 5)

    monkeypatch.setattr(E.subprocess, "run", broken)
    E.git_commit.cache_clear()
    assert E.git_commit() == "unknown"


def test_nvml_wrapper_reads_and_degrades(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _pynvml())
    n = E.NVML(3)
    assert n.ok and n.h == "h3"
    assert n.energy_mj() == 1000.0 and n.power_w() == pytest.approx(450.5) and n.sm_clock_mhz() == 1980
    assert n.temperature_c() == 41 and n.uuid() == "GPU-1234" and n.driver() == "570.124"
    calls = {c[0]: c[2] for c in sys.modules["pynvml"].calls}
    assert calls["clock"] == (1,) and calls["temp"] == (0,)  # NVML_CLOCK_SM, NVML_TEMPERATURE_GPU
    monkeypatch.setitem(sys.modules, "pynvml", _pynvml(fail=("power", "energy", "driver"), as_bytes=False))
    n = E.NVML()
    assert n.power_w() is None and n.energy_mj() is None and n.driver() is None and n.uuid() == "GPU-1234"
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    n = E.NVML()
    assert not n.ok and n.nv is None
    assert [n.energy_mj(), n.power_w(), n.sm_clock_mhz(), n.temperature_c(), n.uuid(), n.driver()] == [None] * 6


def test_nvml_singleton_uses_the_index_variable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _pynvml())
    monkeypatch.setenv("ADVISOR_NVML_INDEX", "2")
    n = E.nvml()
    assert n.h == "h2" and E.nvml() is n


def test_window_energy_and_power(monkeypatch):
    t = _torch()
    monkeypatch.setitem(sys.modules, "torch", t)
    monkeypatch.setitem(sys.modules, "pynvml", _pynvml(energy=(1000.0, 3500.0)))
    clock = iter([10.0, 10.5])
    monkeypatch.setattr(E, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    with E.Window() as w:
        pass
    assert w.seconds == pytest.approx(0.5) and w.energy_j == pytest.approx(2.5) and w.avg_power_w == pytest.approx(5.0)
    assert w.sm_clock_mhz == 1980 and w.power_end_w == pytest.approx(450.5) and len(t.syncs) == 2
    # a CPU tensor's window does not synchronize CUDA; no NVML: time only
    monkeypatch.setattr(E, "_NVML", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    clock2 = iter([1.0, 3.0, 4.0])
    monkeypatch.setattr(E, "time", types.SimpleNamespace(perf_counter=lambda: next(clock2)))
    w = E.end_window(E.begin_window(types.SimpleNamespace(type="cpu")))
    assert w.seconds == 2.0 and w.energy_j is None and w.avg_power_w is None and len(t.syncs) == 2
    # an exception inside the block leaves the window open (no end reading)
    with pytest.raises(ValueError), E.Window() as w3:
        raise ValueError("x")
    assert w3.seconds is None


def test_provenance_with_a_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _torch())
    monkeypatch.setitem(sys.modules, "pynvml", _pynvml())
    monkeypatch.setenv("ADVISOR_GIT_COMMIT", "c0ffee")
    d = E.provenance()
    assert d["torch"] == "9.9.9" and d["cuda"] == "12.8" and d["gpu_name"] == "NVIDIA H200" and d["gpu"] == "h200"
    assert d["gpu_mem_gb"] == pytest.approx(150.75, abs=0.01) and d["gpu_cc"] == "9.0" and d["gpu_sms"] == 132
    assert d["gpu_uuid"] == "GPU-1234" and d["driver"] == "570.124" and d["git_commit"] == "c0ffee"
    assert d["code_sha"] == E.code_sha() and d["date_utc"].endswith("Z")
    assert E.provenance() is d  # once per process


@pytest.mark.parametrize("torch_mod,gpu", [("cpu", "cpu"), (None, "unknown")])
def test_provenance_without_a_gpu(monkeypatch, torch_mod, gpu):
    monkeypatch.setitem(sys.modules, "torch", _torch(cuda=False) if torch_mod else None)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    d = E.provenance()
    assert d["gpu_name"] == gpu and d["gpu"] == gpu and d["gpu_uuid"] is None and d["driver"] is None
