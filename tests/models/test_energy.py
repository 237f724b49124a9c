"""models.energy: power within [idle, TDP] everywhere; one J/token per configuration in every command."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import advisor
from models.energy import board_power_w, idle_w, power_params
from profiles import load

CAT = load()
PRECISIONS = sorted(m.id for m in CAT.methods.values() if m.kind == "precision")


@settings(max_examples=300, deadline=None)
@given(gpu=st.sampled_from(sorted(CAT.gpus)), um=st.floats(-1, 50, allow_nan=False),
       uc=st.floats(-1, 50, allow_nan=False))
def test_board_power_stays_between_idle_and_tdp(gpu, um, uc):
    g = CAT.gpu(gpu)
    p = board_power_w(g, um, uc)
    assert idle_w(g) - 1e-9 <= p <= g.tdp_w + 1e-9


@settings(max_examples=120, deadline=None)
@given(gpu=st.sampled_from(sorted(CAT.gpus)), precision=st.sampled_from(PRECISIONS),
       batch=st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 256]),
       engine=st.sampled_from(["vllm", "transformers", "llama.cpp", "tensorrt-llm", "sglang"]))
def test_every_prediction_draws_between_idle_and_tdp(gpu, precision, batch, engine):
    r = advisor.predict(model="llama3.1-8b", gpu=gpu, engine=engine, precision=precision, batch=batch,
                        prompt_len=512, gen_len=128)
    if not r["supported"]:
        return
    g = CAT.gpu(gpu)
    p = r["power_w"]
    assert idle_w(g) - 1e-6 <= p["value"] <= g.tdp_w + 1e-6
    assert idle_w(g) - 1e-6 <= p["low"] <= p["value"] <= p["high"] <= g.tdp_w + 1e-6


def test_power_grows_with_utilisation_and_the_fit_is_shipped():
    g = CAT.gpu("h200")
    ps = [board_power_w(g, u, u / 4) for u in (0.0, 0.2, 0.5, 0.8)]
    assert ps == sorted(ps) and ps[-1] > ps[0]
    doc = power_params()
    assert doc["rows"] > 500 and set(doc["sources"]) >= {"llamacpp:h200", "tp:h200"}


def _predict_for(gpu, model, engine, label, batch, prompt_len, gen_len, num_gpus=1):
    parts = [x.strip() for x in label.split("+")]
    prec = parts[0]
    kv = next((p for p in parts[1:] if p.startswith("kv-") or p in ("streamingllm", "snapkv", "pyramidkv")),
              "kv-fp16")
    sp = next((p for p in parts[1:] if p.startswith("drop-") or p.startswith("2:4")), "dense")
    return advisor.predict(model=model, gpu=gpu, engine=engine, precision=prec, sparsity=sp, kv=kv, batch=batch,
                           prompt_len=prompt_len, gen_len=gen_len, num_gpus=num_gpus)


def test_one_configuration_one_j_per_token_in_every_command():
    from advisor.engine import Request, recommend
    from advisor.plan import PlanRequest, compare, plan

    model, gpu, eng = "llama3.1-8b", "h100-sxm", "vllm"
    rec = recommend(Request(gpu=gpu, model=model, max_quality_loss=None, context=4096, gen_len=256, batch=8,
                            engine=eng))
    p = rec.best.prediction
    direct = _predict_for(gpu, model, eng, p.candidate.label, 8, 4096 - 256, 256)
    assert p.j_per_token.value == pytest.approx(direct["j_per_token"]["value"], rel=1e-9)
    rows = compare(model, gpus=(gpu,), max_quality_loss=None, context=4096, gen_len=256, batch=8, engine=eng)
    c = rows[0]
    direct = _predict_for(gpu, model, eng, c.candidate, c.batch, 4096 - 256, 256)
    assert c.j_per_token == pytest.approx(direct["j_per_token"]["value"], rel=1e-9)
    pl = plan(PlanRequest(model=model, qps=2, prompt_len=1024, gen_len=256, ttft_p95_s=5.0, tpot_p95_s=0.2,
                          gpus=(gpu,), max_quality_loss=None, engine=eng))
    o = pl[0].best
    direct = _predict_for(gpu, model, eng, o.candidate, o.concurrency, 1024, 256, o.tp)
    assert o.j_per_token == pytest.approx(direct["j_per_token"]["value"], rel=1e-9)


def test_validate_energy_scores_held_out_sources_and_published_rows():
    import json

    from click.testing import CliRunner

    from advisor.cli import main
    r = CliRunner().invoke(main, ["validate", "--energy", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    groups = d["measured"]["groups"]
    assert {"llamacpp:h200", "tp:h200"} <= set(groups)
    for sc in list(groups.values()) + list(d["published_j_per_token"].values()):
        assert sc["n"] > 0 and 0 <= sc["median_ape"] < 1 and 0 <= sc["coverage90"] <= 1
    assert d["published_rows"] > 20 and set(d["published_j_per_token"]) >= {"h100-sxm", "b200"}


def test_kv_cache_reads_draw_more_than_weight_streaming_at_the_same_bandwidth():
    """The power probe's finding (decode attention 682 W where a copy drew 472 W at the same u_memory), as the
    fitted c_kv carries it: a step whose bytes are KV reads draws at least as much, never beyond [idle, TDP]."""
    from models.energy import board_power_w, idle_w, power_params
    from profiles import load
    g = load().gpu("h200")
    assert power_params().get("c_kv", 0.0) >= 0.0
    weights = board_power_w(g, 0.6, 0.05)
    kv = board_power_w(g, 0.6, 0.05, u_kv=0.6)
    assert idle_w(g) <= weights <= kv <= g.tdp_w
    assert board_power_w(g, 0.2, 0.0, u_kv=0.9) == board_power_w(g, 0.2, 0.0, u_kv=0.2)  # u_kv is part of u_memory
