"""models.validate: a split with one group is skipped, the analytical MAPE, published rows per engine with a
given predictor (per-stream figures, rows the predictor cannot answer), filtering of a published CSV, and
the dependency-free SVG scatter."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from models import validate as MV


def test_a_split_with_one_group_is_skipped():
    from measurement.dataset import load_dataset

    df = load_dataset(ok_only=True)
    df = df[df["gpu"] == "h200"]
    df = df[df["model"].isin(sorted(df["model"].unique())[:3])]
    res = MV.held_out(df)
    assert res["leave-one-gpu-out"] == {"skipped": "only one gpu in the data"}
    r = res["leave-one-model-out"]
    assert r["scores"]["decode_ms"]["n"] == len(r["pairs"]["decode_ms"]["pred"]) > 0
    assert all(v >= 0 for v in r["analytical"].values())
    # the analytical model's held-out error, its constants refitted on each fold's training rows
    assert r["scores"]["decode_ms"]["analytical_held_out_mape"] >= 0 and r["folds"] >= 2
    ana = r["pairs"]["decode_ms"]["analytical"]
    assert np.isfinite(ana).sum() == r["scores"]["decode_ms"]["n"]


def test_analytical_scores_skip_missing_targets():
    A = np.array([[2.0, 1.0, 10.0, np.nan], [4.0, 1.0, 10.0, np.nan], [9.0, 1.0, 10.0, np.nan]])
    Y = np.array([[1.0, 1.0, 8.0, np.nan], [4.0, 1.0, 0.0, np.nan], [np.nan, 2.0, -1.0, np.nan]])
    res = MV._analytical_scores(A, Y)
    assert res == {"decode_ms": pytest.approx(0.5), "prefill_ms": pytest.approx(1 / 6), "peak_mem_gb": 0.25}


def test_published_errors_with_a_given_predictor():
    rows = MV.published_rows()
    asked = []

    def predictor(cat, gpu, llm, cand, sc):
        asked.append((gpu.id, llm.id, cand.precision, sc.batch, sc.backend))
        if llm.id == "llama2-7b":
            raise ValueError("does not fit")
        return 100.0

    res = MV.published_errors(predictor)
    kept = [r for r in rows if r["model_id"] != "llama2-7b"]
    assert sum(d["n"] for d in res.values()) == len(kept) and len(asked) == len(rows)
    for e, d in res.items():
        for gpu, model, prec, batch, pred, meas in d["rows"]:
            r = next(x for x in kept if (x["gpu_id"], x["model_id"], x["precision_id"], x["engine"]) ==
                     (gpu, model, prec, e) and int(float(x["batch"])) == batch and float(x["decode_tok_s"]) == meas)
            aggregate = "aggregate" in r["metric_definition"].lower()
            assert pred == (100.0 if batch == 1 or aggregate else 100.0 / batch)
        assert d["mape"] == pytest.approx(np.mean([abs(p - m) / m for *_, p, m in d["rows"]]))
    assert {a[4] for a in asked} == {"eager", "compiled"}  # transformers rows run eager, other engines compiled


def test_published_rows_keep_only_what_maps(tmp_path):
    cols = ["gpu", "model", "precision", "engine", "batch", "prompt_len", "gen_len", "decode_tok_s",
            "metric_definition"]
    good = dict(gpu="h100-sxm", model="llama3.1-8b", precision="bf16", engine="vllm", batch="1", prompt_len="",
                gen_len="", decode_tok_s="150", metric_definition="")
    bad = [dict(good, gpu="tpu-v5"), dict(good, precision="2:4-magnitude"), dict(good, decode_tok_s=""),
           dict(good, batch=""), dict(good, engine="llama.cpp"), dict(good, model="gpt-5")]
    p = tmp_path / "pub.csv"
    with open(p, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows([good] + bad)
    (r,) = MV.published_rows(p)
    assert (r["gpu_id"], r["model_id"], r["precision_id"]) == ("h100-sxm", "llama3.1-8b", "bf16")


def test_svg_scatter(tmp_path):
    p = MV.svg_scatter({"pred": [2.0, 200.0, -1.0, np.nan], "true": [2.5, 150.0, 3.0, 2.0]}, "t: decode",
                       tmp_path / "a.svg")
    svg = p.read_text()
    assert svg.startswith("<svg") and svg.count("<circle") == 2 and "t: decode" in svg
    assert ">10^0.3<" in svg and ">10^2.4<" in svg  # the axes span log10(2) - 0.05 .. log10(200) + 0.05
    empty = MV.svg_scatter({"pred": [], "true": []}, "none", tmp_path / "b.svg").read_text()
    assert "none: no data" in empty and "<circle" not in empty
