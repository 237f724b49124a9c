"""advisor.predict and the engine dimension, on the shipped catalogs and engine parameters."""
import json
import math

import pytest

import advisor
from advisor.deploy import launch, option_names
from models.candidate import Candidate
from profiles import load

KEYS = ("decode_tok_s", "output_tok_s", "prefill_tok_s", "ttft_ms", "tpot_ms", "peak_mem_gb", "power_w", "j_per_token")


def test_predict_shape_and_provenance():
    r = advisor.predict(model="llama3.1-8b", gpu="h100-sxm", engine="vllm", precision="bf16")
    assert r["supported"] and r["fits"] and r["engine"].startswith("vllm ")
    for k in KEYS:
        e = r[k]
        assert e["low"] <= e["value"] <= e["high"] and math.isfinite(e["value"]) and e["unit"] and e["source"]
    json.dumps(r, allow_nan=False)


def test_fp8_beats_bf16_on_hopper_with_vllm():
    f = advisor.predict(model="llama3.1-8b", gpu="h100-sxm", engine="vllm", precision="fp8")
    b = advisor.predict(model="llama3.1-8b", gpu="h100-sxm", engine="vllm", precision="bf16")
    assert f["decode_tok_s"]["value"] >= 1.25 * b["decode_tok_s"]["value"]


def test_int4_ttft_near_bf16_with_vllm():
    a = advisor.predict(model="llama3.1-8b", gpu="h100-sxm", engine="vllm", precision="awq-int4", prompt_len=2048)
    b = advisor.predict(model="llama3.1-8b", gpu="h100-sxm", engine="vllm", precision="bf16", prompt_len=2048)
    assert a["ttft_ms"]["value"] <= 1.5 * b["ttft_ms"]["value"]


def test_t4_runs_awq_and_gptq_on_vllm_but_not_trtllm():
    for prec in ("awq-int4", "gptq-int4"):
        assert advisor.predict(model="llama3.1-8b", gpu="t4", engine="vllm", precision=prec)["supported"]
    r = advisor.predict(model="llama3.1-8b", gpu="t4", engine="tensorrt-llm", precision="awq-int4")
    assert not r["supported"] and "vllm" in r["reason"]


def test_an_unsupported_answer_has_every_key_and_its_quality():
    """The engine does not run it: the same keys as any answer, speed figures None, quality (the model's and the
    method's, not the engine's) still given."""
    r = advisor.predict(model="llama3.1-8b", gpu="t4", engine="tensorrt-llm", precision="awq-int4")
    ok = advisor.predict(model="llama3.1-8b", gpu="t4", engine="vllm", precision="awq-int4")
    assert not r["supported"] and set(ok) - set(r) <= {"cost_model", "roofline_decode_ms"}
    assert all(r[k] is None for k in KEYS)
    assert r["quality"]["ppl_delta"] == ok["quality"]["ppl_delta"] and r["quality"]["ppl_delta"]["value"] > 0
    json.dumps(r, allow_nan=False)


def test_llama_cpp_on_two_gpus_is_a_layer_split():
    r = advisor.predict(model="llama3.1-70b", gpu="a100-80g-sxm", engine="llama.cpp", precision="gguf-q4_k_m",
                        num_gpus=2)
    assert r["supported"] and any("layer split" in n for n in r["notes"])


def test_tp_size_that_does_not_divide_heads_lists_valid_sizes():
    r = advisor.predict(model="llama3.1-70b", gpu="h100-sxm", engine="vllm", precision="bf16", num_gpus=3)
    assert not r["supported"] and "valid sizes: 1, 2, 4, 8" in r["reason"]


def test_unknown_ids_raise_value_error_with_close_matches():
    with pytest.raises(ValueError, match="vllm"):
        advisor.predict(model="llama3.1-8b", gpu="h100-sxm", engine="vlm")
    with pytest.raises(ValueError, match="h100"):
        advisor.predict(model="llama3.1-8b", gpu="h10", engine="vllm")
    with pytest.raises(ValueError):
        advisor.predict(model="llama3.1-8b", gpu="h100-sxm", batch=0)


def test_listings():
    assert {"vllm", "sglang", "tensorrt-llm", "llama.cpp", "transformers"} <= set(advisor.engines())
    assert "gguf-q4_k_m" in advisor.methods("llama.cpp") and "gguf-q4_k_m" not in advisor.methods("vllm")
    info = advisor.gpu_info("l4")
    assert info["arch"] == "sm89" and info["mem_bw_gbps"] > 0 and info["tdp_w"] > 0


@pytest.mark.parametrize("engine,gpu,prec,kv,n", [
    ("vllm", "h100-sxm", "fp8", "kv-fp8", 2), ("vllm", "t4", "awq-int4", "kv-fp16", 1),
    ("sglang", "a100-80g-sxm", "gptq-int4", "kv-fp16", 4), ("tensorrt-llm", "h200", "fp8", "kv-fp8", 1),
    ("llama.cpp", "rtx4090", "gguf-q4_k_m", "kv-q8_0", 2)])
def test_launch_lines_use_only_the_engines_option_names(engine, gpu, prec, kv, n):
    cat = load()
    eng = cat.engines[engine]
    d = launch(cat, engine, cat.gpu(gpu), cat.llm("llama3.1-70b"), Candidate(prec, "dense", kv), 8192, 16, n)
    names = set(eng.get("args"))
    assert set(option_names(d["command"])) <= names, d["command"]
    toks = d["command"].split()
    if "--quantization" in toks:
        assert toks[toks.index("--quantization") + 1] in eng.get("quantization_values")
    assert "(" not in d["command"] and all(isinstance(x, str) for x in d["requires"])


def test_following_the_quality_relaxation_admits_a_candidate():
    """The advice 'quality: ... --max-ppl-delta X% would admit it' must hold when followed: it names only a
    candidate whose figure may pass a bound (not one known only from the small model trained here)."""
    import re

    from advisor.engine import Request, recommend
    from profiles import load
    cat = load()
    rec = recommend(Request(gpu="h100-sxm", model="llama3.1-70b", max_quality_loss=0.02), cat)
    assert rec.best is None
    advice = [r for r in rec.relaxations if "--max-ppl-delta" in r]
    assert advice
    bound = float(re.search(r"--max-ppl-delta ([0-9.]+)%", advice[0]).group(1)) / 100
    again = recommend(Request(gpu="h100-sxm", model="llama3.1-70b", max_quality_loss=bound), cat)
    assert again.best is not None and again.best.prediction.quality_loss.value <= bound
