"""measurement.tp_bench off the GPU: the NVML energy reader, nvidia-smi parsing (interconnect, driver), the
option parser, and rank 0's row writing, status and roofline helpers on a Bench built without CUDA."""
from __future__ import annotations

import csv
import subprocess
import sys
import types
from types import SimpleNamespace as NS

import pytest

from measurement import tp_bench as TB
from measurement.tp import COLUMNS


def test_energy_reads_joules_or_nothing(monkeypatch):
    nv = types.ModuleType("pynvml")
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    vals = iter([5000.0, 12_500.0])
    nv.nvmlDeviceGetTotalEnergyConsumption = lambda h: next(vals)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    e = TB.Energy(1)
    assert e.h == "h1" and e.read_j() == 12.5
    assert e.read_j() is None  # the counter stopped answering
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert TB.Energy(0).h is None and TB.Energy(0).read_j() is None


def test_nvidia_smi_parsing(monkeypatch):
    topo = ("\tGPU0\tGPU1\tCPU Affinity\n"
            "GPU0\t X \tNV18\t0-47\n"
            "GPU1\tNV18\t X \t0-47\n")
    answers = {"topo": topo, "--query-gpu=driver_version": "570.124.06\n570.124.06\n"}
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: NS(stdout=answers[cmd[1]]))
    assert TB.interconnect() == "NV18" and TB._driver() == "570.124.06"
    answers["topo"] = "no GPUs\n"
    assert TB.interconnect() == ""

    def missing(*a, **k):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", missing)
    assert TB.interconnect() == "" and TB._driver() == ""
    assert TB._ints("1, 2,,64") == [1, 2, 64]


@pytest.fixture
def bench(tmp_path, monkeypatch):
    try:
        import torch  # noqa: F401
    except ImportError:
        t = types.ModuleType("torch")
        t.OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {})
        monkeypatch.setitem(sys.modules, "torch", t)
    b = TB.Bench.__new__(TB.Bench)  # rank 0 of a one-GPU run, without CUDA
    b.a = NS(budget=100.0)
    b.rank, b.world, b.dist, b.t0 = 0, 1, None, TB.time.time()
    b.fh = open(tmp_path / "tp_rows.csv", "w", newline="")
    b.w = csv.DictWriter(b.fh, fieldnames=COLUMNS)
    b.w.writeheader()
    b.logf = open(tmp_path / "tp_run.log", "w")
    b.base = {"engine": "harness-tp", "gpu": "h200", "weights": "random", "source_id": "call-3"}
    b.peaks = {"copy_bw_gbps": 4000.0, "matmul_tflops_bf16": 800.0}
    yield b
    b.fh.close()
    b.logf.close()


def _rows(tmp_path):
    return list(csv.DictReader(open(tmp_path / "tp_rows.csv")))


def test_rank0_rows_status_and_roofline(bench, tmp_path, capsys):
    common = {"model": "llama3.1-8b", "precision": "bf16", "num_gpus": 1}
    bench.emit(**common, metric="decode_tok_s", batch=1, value=200.0, status="ok", unknown_column="dropped")
    bench._status(common, "decode_tok_s", 64, 4096, RuntimeError("CUDA out of memory. Tried to allocate 1 GiB"))
    bench._status(common, "prefill_tok_s", 16, 4096, ValueError("bad shape"))
    rows = _rows(tmp_path)
    assert [(r["metric"], r["batch"], r["status"]) for r in rows] == [
        ("decode_tok_s", "1", "ok"), ("decode_tok_s", "64", "does_not_fit"), ("prefill_tok_s", "16", "error")]
    assert rows[0]["source_id"] == "call-3" and rows[0]["date_utc"].endswith("Z") and rows[0]["value"] == "200.0"
    assert rows[2]["reason"] == "ValueError: bad shape" and rows[1]["prompt_len"] == "4096"
    log = (tmp_path / "tp_run.log").read_text()
    assert "decode_tok_s B=64 ctx=4096: OOM" in log and "error ValueError" in log and "OOM" in capsys.readouterr().out
    assert bench._roof(8e9, 1e12) == (pytest.approx(2.0), "memory")
    assert bench._roof(1e9, 1e15) == (pytest.approx(1250.0), "compute")
    assert bench._roof(1e9, 1e12, "fp8")[0] == pytest.approx(1.25)  # no fp8 peak measured: the bf16 one
    bench.peaks = {}
    assert bench._roof(1e9, 1e12) == (None, "")
    assert bench.gather(3) == [3] and bench.barrier() is None and 99 < bench.left() <= 100


def test_other_ranks_write_nothing(bench, tmp_path):
    bench.rank = 1
    bench.emit(metric="decode_tok_s", status="ok")
    bench.log("rank 1 says hi")
    assert _rows(tmp_path) == [] and (tmp_path / "tp_run.log").read_text() == ""
