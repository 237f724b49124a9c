"""measurement.quality.rows: the campaign's row file (append after a cut line, resume keys), its CSV and
printed table (no torch needed for these)."""
from __future__ import annotations

import csv
import io

from measurement.quality import rows as QR


def _row(**kw):
    r = {"model": "kjv-llama-7m", "precision": "bf16", "sparsity": "dense", "kv": "kv-fp16", "kv_budget": None,
         "metric": "ppl", "seq_len": 256, "value": 12.3456, "baseline": 12.0, "delta_rel": 0.0288, "status": "ok"}
    r.update(kw)
    return r


def test_append_and_read_back_after_a_cut_line(tmp_path):
    p = tmp_path / QR.ROWS_NAME
    assert QR.read_rows(p) == []
    QR.append_row(p, _row())
    with open(p, "a") as fh:
        fh.write('{"model": "kjv-llama-7m", "prec')  # killed mid-write
    QR.append_row(p, _row(precision="fp8"))
    rows = QR.read_rows(p)
    assert [r["precision"] for r in rows] == ["bf16", "fp8"]
    assert len(p.read_text().splitlines()) == 3  # the cut line stays on its own line


def test_row_key_normalises_budget_and_lengths():
    assert QR.row_key(_row(kv_budget="", seq_len="256")) == QR.row_key(_row())
    assert QR.row_key(_row(kv="snapkv", kv_budget="128"))[4] == 128


def test_csv_and_table(tmp_path):
    rows = [_row(), _row(precision="gptq-int4", value=None, baseline=None, delta_rel=None, status="unsupported",
                         reason="needs a GPU " + "x" * 100)]
    QR.write_csv(rows, tmp_path / "q.csv")
    back = list(csv.DictReader(open(tmp_path / "q.csv")))
    assert list(back[0]) == QR.COLUMNS and back[0]["value"] == "12.3456" and back[1]["value"] == ""
    out = io.StringIO()
    QR.print_table(rows, file=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["precision", "sparsity", "kv"] and len(lines) == 3
    assert "12.346" in lines[1] and "+2.88%" in lines[1]
    assert lines[2].split()[4:8] == ["-", "-", "-", "unsupported"] and lines[2].endswith("x" * 58 + ")")
    assert QR._fmt(True, ".3f") == "-"


def test_versions_and_commit(monkeypatch):
    monkeypatch.setenv("ADVISOR_GIT_COMMIT", "abc")
    from measurement import env

    env.git_commit.cache_clear()
    try:
        assert QR._git_commit() == "abc"
    finally:
        env.git_commit.cache_clear()
    assert QR._version("numpy") and QR._version("no-such-distribution-xyz") is None
    assert QR._now().endswith("Z") and len(QR._now()) == 20


def test_metadata_sidecar(tmp_path, monkeypatch):
    import json
    import sys
    import types
    from types import SimpleNamespace as NS

    m = types.ModuleType("measurement.quality.model")  # the real one imports torch; metadata reads constants
    m.DATA_DIR, m.TINY, m.SMALL = tmp_path / "shipped", {"layers": 2}, {"layers": 8}
    monkeypatch.setitem(sys.modules, "measurement.quality.model", m)
    import measurement.quality

    monkeypatch.setattr(measurement.quality, "model", m, raising=False)  # `from . import model` reads this first
    monkeypatch.setattr(sys, "argv", ["campaign", "--eval", "--seq-len", "256"])
    args = NS(tiny=False, seq_len=256, prefix=192, calib_windows=16)
    rows = [_row(), _row(precision="fp8", status="unsupported"), _row(precision="w8a8", status="error")]
    (tmp_path / "train_log.json").write_text(json.dumps({"params": 7_123_456, "steps": 800, "best_val_ppl": 9.9,
                                                         "ignored": 1}))
    meta = QR.metadata(args, {"gpu": "h200"}, "kjv-llama-7m", "kjv-llama-7m.safetensors", rows, tmp_path)
    assert meta["n_rows"] == 3 and meta["status_counts"] == {"ok": 1, "unsupported": 1, "error": 1}
    assert meta["training"]["params"] == 7_123_456 and "ignored" not in meta["training"]
    assert "7,123,456-parameter" in meta["what"] and meta["architecture"] == {"layers": 8}
    assert "windows of 256 tokens" in meta["protocols"]["ppl"] and "first 192 tokens" in meta["protocols"]["ppl_decode"]
    assert "16 windows" in meta["protocols"]["calibration"] and meta["command"].endswith("--eval --seq-len 256")
    assert meta["weights"].endswith("kjv-llama-7m.safetensors (bf16 safetensors, tied embeddings) + config.json")
    assert meta["columns"] == QR.COLUMNS and meta["provenance"] == {"gpu": "h200"}
    # no training log in the output: the shipped one; none at all: an empty training section
    tiny = NS(**{**vars(args), "tiny": True})
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "train_log.json").write_text(json.dumps({"params": 42}))
    meta = QR.metadata(tiny, {}, "m", "w", [], tmp_path / "elsewhere")
    assert meta["training"]["params"] == 42 and meta["architecture"] == {"layers": 2} and meta["n_rows"] == 0
    (tmp_path / "shipped" / "train_log.json").unlink()
    assert QR.metadata(tiny, {}, "m", "w", [], tmp_path / "elsewhere")["training"] == {}
