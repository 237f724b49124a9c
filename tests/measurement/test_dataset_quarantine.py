"""measurement.dataset: torn, corrupt and non-physical rows are quarantined and counted, never imported as ok."""
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
