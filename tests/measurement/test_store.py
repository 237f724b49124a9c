"""measurement.store and the import side of measurement.dataset: config keys, resumption rules (an error
row is retried once), torn-line recovery, JSON of numpy scalars, row ids per compile mode, and the
metadata file written beside an import (rewritten header, corrupt metadata, run notes)."""
from __future__ import annotations

import json

import numpy as np

from measurement import dataset as D
from measurement.store import RowStore, RunConfig, config_key


def test_config_key_normalises_values_and_compile_mode():
    rc = RunConfig(model="llama3.1-8b", batch=4)
    k = rc.key("h200")
    assert k.startswith("gpu=h200|model=llama3.1-8b|precision=bf16") and "kv_budget=-" in k and "compile_mode" not in k
    d = rc.ident("h200")
    assert config_key(dict(d, batch=4.0)) == k  # a float read back from CSV is the same config
    assert config_key(dict(d, kv_budget=float("nan"))) == k and config_key(dict(d, kv_budget="")) == k
    other = RunConfig(model="llama3.1-8b", batch=4, compile_mode="regional").key("h200")
    assert other == k + "|compile_mode=regional"
    assert RunConfig(model="m", backend="eager", compile_mode="regional").key("h200").count("compile_mode") == 0
    assert rc.group == ("llama3.1-8b", "bf16", "dense", "random")


def test_done_keys_retry_an_error_once(tmp_path):
    st = RowStore(tmp_path)
    a, b = RunConfig(model="m", batch=1), RunConfig(model="m", batch=2)
    st.append({"key": a.key("g"), "status": "ok"})
    st.append({"key": b.key("g"), "status": "error"})
    assert st.done_keys() == {a.key("g")}  # b is retried
    assert st.done_keys(retry_errors=False) == {a.key("g"), b.key("g")}
    st.append({"key": b.key("g"), "status": "error"})
    assert st.done_keys() == {a.key("g"), b.key("g")}  # a second error: done
    no_key = dict(RunConfig(model="m", batch=8).ident("g"), status="ok")
    st.append(no_key)
    assert config_key(no_key) in st.done_keys()  # rows without a stored key get one from their fields


def test_append_after_a_torn_line_and_numpy_values(tmp_path):
    st = RowStore(tmp_path)
    st.path.write_text('{"key": "a", "status": "ok"}\n{"key": "b", "sta')  # killed mid-write
    st.append({"key": "c", "status": "ok", "n": np.int64(3), "x": np.float32(0.5), "p": tmp_path})
    rows = st.rows()
    assert [r["key"] for r in rows] == ["a", "c"]
    assert rows[1]["n"] == 3 and rows[1]["x"] == 0.5 and rows[1]["p"] == str(tmp_path)
    assert RowStore(tmp_path / "empty").rows() == []


def test_row_id_depends_on_a_non_default_compile_mode():
    r = {"key": "k", "gpu_uuid": "GPU-1", "date_utc": "2026-12-01T10:00:00Z"}
    base = D.row_id(r)
    assert D.row_id(dict(r, compile_mode=D.DEFAULT_COMPILE_MODE)) == base
    assert D.row_id(dict(r, compile_mode="regional")) != base
    assert D.row_id(dict(r, compile_mode="regional", backend="eager")) == base


def test_read_jsonl_skips_blank_lines_and_non_objects(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"status": "ok", "decode_ms_per_token": 1.0}\n\n[1, 2]\n"text"\n')
    rows, bad = D.read_jsonl_checked(p)
    assert len(rows) == 1 and [(n, why) for n, why, _ in bad] == [(3, "not a JSON object"), (4, "not a JSON object")]


def test_import_rewrites_an_old_header_and_repairs_metadata(tmp_path):
    csv_p, meta_p = tmp_path / "ds.csv", tmp_path / "ds.meta.json"
    csv_p.write_text("row_id,key,status\nold1,k0,ok\n")  # written before columns were added
    meta_p.write_text("{not json")
    src = tmp_path / "run7" / "rows.jsonl"
    src.parent.mkdir()
    rows = [{"key": f"k{b}", "status": "ok", "batch": b, "gpu": "h200", "date_utc": f"2026-12-01T10:00:0{b}Z",
             "decode_ms_per_token": 2.0, "decode_trials_ms": [2.0, 2.1], "copy_bw_gbps": 4100.0 if b == 2 else None,
             "matmul_tflops_bf16": 700.0} for b in (1, 2)]
    rows.append({"key": "k9", "status": "error", "reason": "boom", "date_utc": "2026-12-01T10:00:09Z"})
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert D.import_rows(src, csv_path=csv_p, meta_path=meta_p, note="first import") == 3
    df = D.load_dataset(csv_p)
    assert list(df.columns) == list(D.COLUMNS) and len(df) == 4 and df["row_id"].iloc[0] == "old1"
    assert json.loads(df.loc[df["key"] == "k1", "decode_trials_ms"].iloc[0]) == [2.0, 2.1]
    assert set(df.loc[df["key"] != "k0", "run_id"]) == {"run7"}
    meta = json.loads(meta_p.read_text())
    (run,) = meta["runs"]
    assert run["rows"] == 3 and run["status_counts"] == {"ok": 2, "error": 1} and run["note"] == "first import"
    assert run["provenance"]["copy_bw_gbps"] == 4100.0  # from the first ok row that has the peaks
    assert run["first_row_utc"] == "2026-12-01T10:00:01Z" and run["last_row_utc"] == "2026-12-01T10:00:09Z"
    assert set(meta["columns"]) == set(D.COLUMNS)
    # importing again adds nothing and keeps the run's counts
    assert D.import_rows(src, csv_path=csv_p, meta_path=meta_p) == 0
    assert json.loads(meta_p.read_text())["runs"][0]["rows"] == 3
    assert len(D.load_dataset(csv_p, ok_only=True)) == 3
