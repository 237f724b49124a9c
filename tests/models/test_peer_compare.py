"""models.peer_compare with the peer (llm-analysis, installed in its own environment) replaced by a fake
``llm_analysis.analysis.infer``: the model file it is given, the GPU/dtype mapping, which rows are compared
(per-stream figures, configs the peer cannot size), the summary and the command line."""
from __future__ import annotations

import json
import logging
import sys
import types

import numpy as np
import pytest

from models import peer_compare as PC


@pytest.fixture
def peer(monkeypatch):
    calls = []
    state = {"latency": lambda kw: 0.002 * kw["batch_size_per_gpu"]}

    def infer(**kw):
        calls.append(kw)
        lat = state["latency"](kw)
        if isinstance(lat, Exception):
            raise lat
        return {"decode_latency": lat}

    pkg = types.ModuleType("llm_analysis")
    mod = types.ModuleType("llm_analysis.analysis")
    mod.infer = infer
    monkeypatch.setitem(sys.modules, "llm_analysis", pkg)
    monkeypatch.setitem(sys.modules, "llm_analysis.analysis", mod)
    yield calls, state
    logging.disable(logging.NOTSET)  # peer_tok_s silences logging for the peer's chatter


@pytest.fixture
def small_dataset(monkeypatch):
    """The measured rows of one peer-known GPU (the held-out fit over the whole set takes seconds)."""
    from measurement import dataset

    full = dataset.load_dataset(ok_only=True)
    sub = full[full["gpu"] == "h100-sxm"].reset_index(drop=True)
    monkeypatch.setattr(dataset, "load_dataset", lambda *a, **k: sub)
    return sub


def test_peer_model_file(tmp_path):
    from profiles import load

    llm = load().llm("llama3.1-8b")
    cfg = json.loads(open(PC._peer_model_file(llm, tmp_path)).read())
    assert cfg["name"] == "advisor_llama3.1-8b" and cfg["num_layers"] == 32 and cfg["num_key_value_heads"] == 8
    # FFN width: a multiple of the hidden size with the parameter count of our 3-matrix MLP (1.5 x 14336 ~ 5 x 4096)
    assert cfg["ffn_embed_dim"] == 5 * 4096


def test_peer_tok_s_maps_gpus_and_dtypes(peer, tmp_path):
    from profiles import load

    calls, state = peer
    llm = load().llm("llama3.1-8b")
    assert PC.peer_tok_s("h100-sxm", llm, "awq-int4", 8, 512, 128, tmp_path) == pytest.approx(8 / 0.016)
    kw = calls[-1]
    assert kw["gpu_name"] == "h100-sxm-80gb" and kw["dtype_name"] == "w4a16e16" and kw["seq_len"] == 512
    assert kw["num_tokens_to_generate"] == 128 and kw["model_name"].endswith("advisor_llama3.1-8b.json")
    assert PC.peer_tok_s("h200", llm, "bf16", 1, 512, 128, tmp_path) is None  # the peer has no H200
    assert PC.peer_tok_s("h100-sxm", llm, "kv-int4", 1, 512, 128, tmp_path) is None
    state["latency"] = lambda kw: 0.0
    assert PC.peer_tok_s("a100-80g-sxm", llm, "bf16", 1, 512, 128, tmp_path) is None
    assert len(calls) == 2


def test_compare_and_summary(peer, small_dataset, monkeypatch):
    calls, state = peer
    real, cache = PC._measured_rows, {}
    monkeypatch.setattr(PC, "_measured_rows", lambda cat: [dict(r) for r in cache.setdefault("rows", real(cat))])
    res = PC.compare()
    meas, pub = res["measured"], res["published"]
    assert meas and pub
    assert {r["gpu"] for r in meas} == {"h100-sxm"} and all(r["ours"] > 0 for r in meas)
    assert all(r["peer"] == pytest.approx(r["batch"] / (0.002 * r["batch"])) for r in meas)
    for r in pub:
        per_stream = r["batch"] > 1 and r["peer"] == pytest.approx(500.0 / r["batch"])
        assert r["peer"] == pytest.approx(500.0) or per_stream
    s = PC.summary(res)
    m = np.array([r["measured"] for r in pub])
    assert s["published"]["n"] == len(pub)
    assert s["published"]["peer_mape"] == pytest.approx(np.mean(np.abs(np.array([r["peer"] for r in pub]) - m) / m))
    # configurations the peer cannot size are left out, not counted as errors
    state["latency"] = lambda kw: ValueError("does not fit") if kw["batch_size_per_gpu"] > 1 else 0.002
    res2 = PC.compare()
    assert {r["batch"] for r in res2["measured"] + res2["published"]} == {1}
    assert PC.summary({"published": [], "measured": res2["measured"]}).keys() == {"measured"}


def test_command_line(monkeypatch, capsys):
    res = {"published": [{"measured": 100.0, "ours": 90.0, "peer": 150.0}],
           "measured": [{"measured": 10.0, "ours": 11.0, "peer": 5.0}, {"measured": 20.0, "ours": 20.0, "peer": 30.0}]}
    monkeypatch.setattr(PC, "compare", lambda: res)
    monkeypatch.setattr(sys, "argv", ["peer_compare", "--json"])
    PC.main()
    out = json.loads(capsys.readouterr().out)
    assert out["summary"] == {"published": {"n": 1, "ours_mape": pytest.approx(0.1), "peer_mape": pytest.approx(0.5)},
                              "measured": {"n": 2, "ours_mape": pytest.approx(0.05), "peer_mape": pytest.approx(0.5)}}
    assert out["measured"] == res["measured"]
    monkeypatch.setattr(sys, "argv", ["peer_compare"])
    PC.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["published: n=1  advisor MAPE 10.0%  llm-analysis MAPE 50.0%",
                     "measured: n=2  advisor MAPE 5.0%  llm-analysis MAPE 50.0%"]
