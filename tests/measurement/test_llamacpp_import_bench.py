"""measurement/llamacpp/import_bench.py: raw llama-bench JSON -> rows with provenance and a datasheet roofline,
appended once (a second import of the same file adds nothing), the input never rewritten."""
import csv
import json
from pathlib import Path

import pytest

from measurement.llamacpp import import_bench as ib
from profiles import load

RAW = Path(__file__).resolve().parents[2] / "measurement" / "data" / "llamacpp" / "raw"


def _args(raw, rows, **kw):
    a = [str(raw), "--model", kw.get("model", "llama2-13b"), "--source-id", "s-test", "--engine-version", "old",
         "--build-flags=-DLLAMA_CUDA=ON", "--date", "2026-12-02", "--commit", "abc", "--rows", str(rows)]
    return a


def test_rows_carry_provenance_and_stay_below_the_datasheet_roofline(tmp_path):
    raw = RAW / "call29_old_build_13b" / "bench_old_llama2-13b_Q4_0_fa1.json"
    before = raw.read_bytes()
    rows = tmp_path / "rows.csv"
    assert ib.main(_args(raw, rows)) == 0
    got = list(csv.DictReader(open(rows, newline="")))
    assert {r["metric"] for r in got} == {"prefill_tok_s", "decode_tok_s"}
    for r in got:
        assert r["engine"] == "llama.cpp" and r["precision"] == "gguf-q4_0" and r["flash_attn"] == "on"
        assert r["weights"] == "random" and r["build_flags"] == "-DLLAMA_CUDA=ON" and r["source_id"] == "s-test"
        assert 0 < float(r["roofline_frac"]) <= 1 and r["roofline_flag"] == ""
    dec = next(r for r in got if r["metric"] == "decode_tok_s")
    rec = json.loads(before)[1]
    llm = load().llm("llama2-13b")
    # the bytes a decode step reads: the tensors less the Q4_0 embedding (18 bytes per 32 weights)
    assert float(dec["weight_bytes_read"]) == pytest.approx(rec["model_size"] - llm.vocab_size * llm.hidden_size * 18 / 32)
    bw = load().gpu("h200").mem_bw_gbps * 1e9
    assert float(dec["roofline_value"]) <= bw / float(dec["weight_bytes_read"]) * 1.0001
    # a second import adds nothing; the raw file is untouched
    assert ib.main(_args(raw, rows)) == 0
    assert len(list(csv.DictReader(open(rows, newline="")))) == len(got)
    assert raw.read_bytes() == before


def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    assert ib.main(_args(bad, tmp_path / "rows.csv")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.json" in err
