"""measurement.dataset: torn, corrupt and non-physical rows are quarantined and counted, never imported as ok;
concurrent imports keep every row."""
from __future__ import annotations

import json

import pytest

from measurement.dataset import import_rows, read_jsonl_checked


def test_torn_nan_and_negative_rows_are_quarantined(tmp_path):
    good = {"status": "ok", "decode_ms_per_token": 5.0, "gpu": "h200", "model": "llama3.1-8b", "precision": "bf16",
            "batch": 1, "prompt_len": 512, "gen_len": 64, "backend": "compiled", "weights": "random"}
    lines = [json.dumps(good), json.dumps(dict(good, batch=2, decode_ms_per_token=float("nan"))),
             json.dumps(dict(good, batch=4, peak_mem_gb=-1.0)), json.dumps(dict(good, batch=8))[:40]]
    src = tmp_path / "run" / "rows.jsonl"
    src.parent.mkdir()
    src.write_text("\n".join(lines) + "\n")
    before = src.read_bytes()
    rows, bad = read_jsonl_checked(src)
    assert len(rows) == 1 and [b[0] for b in bad] == [2, 3, 4]
    with pytest.warns(UserWarning, match="3 row"):
        n = import_rows(src, csv_path=tmp_path / "ds.csv")
    assert n == 1 and src.read_bytes() == before
    q = [json.loads(x) for x in (tmp_path / "run" / "rows.jsonl.quarantine.jsonl").read_text().splitlines()]
    assert [x["line"] for x in q] == [2, 3, 4]


def _imp(args):
    from measurement.dataset import import_rows
    return import_rows(*args[:1], csv_path=args[1])


def test_two_concurrent_imports_of_8_rows_give_16(tmp_path):
    """Issue 15: same configs measured in the same second under two compile modes, imported at once."""
    import multiprocessing as mp
    base = {"status": "ok", "gpu": "h200", "gpu_uuid": "GPU-1", "date_utc": "2026-12-01T10:00:00Z",
            "model": "llama3.1-8b", "precision": "bf16", "backend": "compiled", "decode_ms_per_token": 5.0}
    srcs = []
    for mode in ("regional-graph-fused", "regional-graph-nocompile"):
        d = tmp_path / mode
        d.mkdir()
        rows = [dict(base, batch=b, key=f"k{b}", compile_mode=mode) for b in range(1, 9)]
        (d / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        srcs.append(d / "rows.jsonl")
    csv_p = tmp_path / "ds.csv"
    with mp.get_context("spawn").Pool(2) as pool:
        n = pool.map(_imp, [(s, csv_p) for s in srcs])
    import pandas as pd
    df = pd.read_csv(csv_p)
    assert sum(n) == 16 and len(df) == 16 and df["row_id"].is_unique
