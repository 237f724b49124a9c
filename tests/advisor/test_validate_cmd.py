"""advisor validate: every mode's printed report and --json, with the (minutes-long) validations faked so
that only the command's own work is checked: which validation runs with which hold-out, what is printed
from its result, the plots written, and the end-to-end J/token scoring through advisor.predict."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from advisor import validate_cmd as V
from advisor.cli import main


def _run(*args):
    return CliRunner().invoke(main, ["validate", *args])


def _sc(n=10, mape=0.1, med=0.08, cov=0.9):
    return {"n": n, "mape": mape, "median_ape": med, "coverage90": cov}


@pytest.fixture
def harness(monkeypatch):
    import models.validate as MV

    seen = {}

    def held_out(df):
        seen["rows"] = len(df)
        return {"leave_one_gpu_out": {"scores": {"decode_ms": dict(_sc(), tok_s_mape=0.12, tok_s_median_ape=0.07,
                                                                   analytical_held_out_mape=0.3)},
                                      "pairs": {"decode_ms": {"pred": [1.0, 2.0], "true": [1.1, 1.9]}},
                                      "analytical": {"decode_ms": 0.2}, "folds": 2,
                                      "priors": {"eager_host_factor[fp8]": 1, "eager_host_factor[awq-int4]": 2,
                                                 "kv_dequant_bytes_per_elem": 1}},
                "leave_one_method_out": {"skipped": "only one method in the data"}}

    monkeypatch.setattr(MV, "held_out", held_out)
    monkeypatch.setattr(MV, "published_errors", lambda: {"vllm": dict(_sc(3, 0.25, 0.2), rows=[("x",)])})
    monkeypatch.setattr(V, "_dataset", lambda extra: pd.DataFrame({"a": [1, 2, 3]}))
    return seen


def test_harness_validation_prints_scores_and_writes_plots(harness, tmp_path):
    r = _run("--plots", str(tmp_path / "plots"))
    assert r.exit_code == 0, r.output
    assert harness["rows"] == 3
    out = r.output
    assert "leave_one_gpu_out:" in out and "MAPE   10.0% (analytical: held out   30.0%, in-sample   20.0%)" in out
    assert ("on their prior in a fold (of 2) whose training rows lack the evidence: "
            "eager_host_factor[awq-int4 x2, fp8], kv_dequant_bytes_per_elem") in out
    assert "refitted by models/harness_fit.py on each fold's training rows" in out
    assert "median APE   8.0%  coverage90  90.0%  n=10" in out
    assert "decode tok/s MAPE   12.0%  median APE   7.0%" in out
    assert "skipped: only one method in the data" in out
    assert "vllm               n=  3  MAPE   25.0%  median   20.0%" in out
    svg = (tmp_path / "plots" / "leave_one_gpu_out_decode_ms.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<circle") == 2


def test_harness_validation_json(harness, tmp_path):
    r = _run("--plots", str(tmp_path / "p"), "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["held_out"]["leave_one_gpu_out"] == {
        "fitted": {"decode_ms": dict(_sc(), tok_s_mape=0.12, tok_s_median_ape=0.07)},
        "analytical_held_out_mape": {"decode_ms": 0.3},
        "analytical_in_sample_mape": {"decode_ms": 0.2}, "folds": 2,
        "constants_from_prior": {"eager_host_factor[fp8]": 1, "eager_host_factor[awq-int4]": 2,
                                 "kv_dequant_bytes_per_elem": 1}}
    assert rep["published"] == {"vllm": _sc(3, 0.25, 0.2)}  # the raw rows are left out


def test_energy_validation(monkeypatch):
    import models.energy_fit as EF

    calls = {}

    def validate(cat, by):
        calls["by"] = by
        return {"rows": 42, "measured": {"groups": {"h200": _sc(40)}}, "published_rows": 5,
                "published_j_per_token": {"h100-sxm": _sc(5, 0.3, 0.2, 0.8)}}

    monkeypatch.setattr(EF, "validate", validate)
    monkeypatch.setattr(EF, "published_rows", lambda cat: [])
    r = _run("--energy")
    assert r.exit_code == 0, r.output
    assert calls["by"] == "source" and "leave-one-source-out on 42 measured NVML rows" in r.output
    assert "h200               n=  40  MAPE  10.0%  median APE   8.0%  90% coverage  90.0%" in r.output
    assert "published J/token" in r.output and "n=5" in r.output and "h100-sxm" in r.output
    r = _run("--energy", "--hold-out", "model", "--json")
    assert r.exit_code == 0 and calls["by"] == "gpu"
    assert json.loads(r.output)["end_to_end_j_per_token"] == {}
    monkeypatch.setattr(V, "_end_to_end", lambda pub: {"a100-80g-sxm": _sc(7, 0.4, 0.35, 0.7)})
    r = _run("--energy")
    assert "a100-80g-sxm       n=   7  MAPE  40.0%  median APE  35.0%  90% coverage  70.0%" in r.output


def test_end_to_end_scores_what_predict_answers(monkeypatch):
    import advisor
    import models.energy_fit as EF

    seen = []

    def predict(**kw):
        seen.append((kw["prompt_len"], kw["gen_len"]))
        if kw["model"] == "unknown":
            raise ValueError("unknown model")
        if kw["batch"] > 100:
            return {"supported": False}
        return {"supported": True, "j_per_token": {"value": 0.5 * kw["num_gpus"], "low": 0.4, "high": 0.6}}

    monkeypatch.setattr(advisor, "predict", predict)
    monkeypatch.setattr(EF, "_scores", lambda y, p, lo, hi: {"y": y, "p": p, "lo": lo, "hi": hi})
    rows = [{"model": "llama3.1-8b", "gpu": "h100-sxm", "batch": "8", "n": 1, "j_per_token": 0.55},
            {"model": "llama3.1-70b", "gpu": "h100-sxm", "batch": "8", "n": 4, "j_per_token": 2.1},
            {"model": "unknown", "gpu": "h100-sxm", "batch": "8", "n": 1, "j_per_token": 1.0},
            {"model": "llama3.1-8b", "gpu": "a100-80g-sxm", "batch": "512", "n": 1, "j_per_token": 1.0}]
    pub = [dict(r, prompt=179.0, gen=389.6) for r in rows]
    res = V._end_to_end(pub)
    assert set(seen) == {(179, 390)}  # each row's own lengths, as a user would ask
    assert res == {"h100-sxm": {"y": [0.55, 2.1], "p": [0.5, 2.0], "lo": [0.4, 0.4], "hi": [0.6, 0.6]}}


def test_quality_validation(monkeypatch):
    import models.quality_validate as QV

    calls = {}

    def held_out(cat, by):
        calls["by"] = by
        fam = {"n": 12, "mae_points": 1.234, "mae_beyond_rounding_points": 0.5, "coverage90": 0.75,
               "coverage90_rounding": 0.8,
               "rules": ["family mean", "size pooling"]}
        return {"ppl_delta": {"_predicted_of": {"predicted": 12, "rows": 20}, "int4": fam,
                              "_catalog_methods": {"int4": fam}},
                "as_served": {"ppl_delta": {"int4": fam}}}

    monkeypatch.setattr(QV, "held_out", held_out)
    r = _run("--quality")
    assert r.exit_code == 0, r.output
    assert calls["by"] == "paper" and "ppl_delta: 12 of 20 rows predicted" in r.output
    assert ("int4                     n= 12  MAE   1.23 points (beyond rounding  0.50)  90% coverage  75.0% "
            "(rounding-aware  80.0%)  (family mean, size pooling)") in r.output
    assert "catalog methods only" in r.output and "as served" in r.output
    assert r.output.count("ppl_delta      int4") == 2  # once per summary section
    r = _run("--quality", "--hold-out", "model", "--json")
    assert calls["by"] == "model" and json.loads(r.output)["held_out_by"] == "model"


def test_multi_gpu_validation(monkeypatch):
    import models.tp_model as TP

    grp = dict(_sc(6, 0.05, 0.04, 1.0), interval_factor=1.15)
    res = {"allreduce": {"alpha_us": 12.345, "busbw_gbps": 350.4, "rows": 30, "median_ape": 0.06},
           "decode": {s: {"all": _sc(20, 0.07, 0.05, 0.95), "groups": {"tp2": grp}}
                      for s in ("leave_one_num_gpus_out", "leave_one_model_out")},
           "rows": {"sources": ["call-21", "call-22"]}}
    monkeypatch.setattr(TP, "validate", lambda: res)
    r = _run("--multi-gpu")
    assert r.exit_code == 0, r.output
    assert "all-reduce: 12.35 us + ring bytes / 350 GB/s (n=30, in-sample median APE 6.0%)" in r.output
    assert "decode step, leave-one-num-gpus-out: n=20 median APE 5.0%" in r.output
    assert "tp2            n=  6  median APE   4.0%  coverage 100.0%  interval x/1.15" in r.output
    assert "rows: call-21, call-22" in r.output
    assert json.loads(_run("--multi-gpu", "--json").output) == res


@pytest.fixture
def engine(monkeypatch):
    import measurement.engine_rows as ER
    import models.engine_fit as EF
    import models.engine_validate as EV
    import models.peer_aic as PA

    calls = {}
    monkeypatch.setattr(ER, "load_engine_rows", lambda: ["row"])
    monkeypatch.setattr(EF, "design", lambda rows, eid, cat: calls.setdefault("design", (rows, eid)) and f"D:{eid}")

    def validate_engine(d, by, sibling=None):
        calls["by"], calls["sibling"] = by, sibling
        return {"rows": 50, "sources": 4, "skipped": 1, "pairs": {"pred": [1.0, 2.0]},
                "published": {"decode": dict(_sc(30), n=30)}, "measured": None}

    monkeypatch.setattr(EV, "validate_engine", validate_engine)
    aic = {"available": False, "note": "AIConfigurator is not installed"}

    def side_by_side(d, rows, cat, pred):
        calls["pred"] = list(pred)
        return aic

    monkeypatch.setattr(PA, "side_by_side", side_by_side)
    return calls, aic


def test_engine_validation_without_the_peer(engine):
    calls, _ = engine
    r = _run("--engine", "vLLM", "--hold-out", "model")
    assert r.exit_code == 0, r.output
    assert calls["design"] == (["row"], "vllm") and calls["by"] == "model" and calls["pred"] == [1.0, 2.0]
    assert calls["sibling"] is None  # vLLM takes no other engine's kernel priors
    assert "vllm: 50 rows from 4 sources (skipped: 1)" in r.output
    assert "published decode     n=   30  MAPE   10.0%" in r.output
    assert "peers: AIConfigurator: AIConfigurator is not installed" in r.output
    out = _run("--engine", "vllm", "--json").output  # the progress line goes to stderr
    rep = json.loads(out[out.index("{"):])
    assert rep["engine"] == "vllm" and rep["held_out_by"].startswith("source") and "pairs" not in rep


def test_sglang_is_validated_with_vllms_rows_as_its_prior(engine):
    calls, _ = engine
    assert _run("--engine", "sglang").exit_code == 0
    assert calls["sibling"] == "D:vllm"  # engines.yaml kernel_priors_from: refitted per held-out source


def test_engine_validation_with_the_peer(engine):
    _, aic = engine
    aic.update(available=True, rows=25, aiconfigurator="aiconfigurator 0.12",
               metrics={"decode_tok_s": {"n": 20, "aic_median_ape": 0.3, "ours_median_ape": 0.1, "failed": 5},
                        "ttft_ms": {"n": 0}})
    r = _run("--engine", "vllm")
    assert r.exit_code == 0, r.output
    assert "peers, same rows (25 sampled; aiconfigurator 0.12; ours held out):" in r.output
    assert "decode_tok_s  n=  20  AIConfigurator median APE  30.0%  this advisor  10.0%  (AIC failed on 5)" in r.output
    assert "ttft_ms" not in r.output  # no comparable rows: not listed
