"""Engine memory: the GB an engine fills and the KV tokens left, per the engine's own memory rule."""
import pytest

import advisor
from models import engine_memory as em
from models import engine_speed as es
from models.candidate import Candidate
from profiles import load


@pytest.fixture(scope="module")
def cat():
    return load()


def _q(cat, engine, gpu="h100-sxm", model="llama3.1-70b", prec="fp8", n=1):
    return es.query(cat, cat.gpu(gpu), cat.llm(model), Candidate(prec), cat.engines[engine], num_gpus=n)


def test_a_fraction_of_the_card_and_a_fraction_of_what_is_left(cat):
    vllm, trt = _q(cat, "vllm"), _q(cat, "tensorrt-llm")
    assert not vllm.fraction_of_free and trt.fraction_of_free  # engines.yaml memory_fraction_of
    mem = cat.gpu("h100-sxm").memory_gb
    assert em.usable_gb(vllm, mem, 0.9) == pytest.approx(0.9 * mem)
    fixed = trt.w.weights_gb + trt.runtime_gb_per_gpu
    assert em.usable_gb(trt, mem, 0.9) == pytest.approx(fixed + 0.9 * (mem - fixed))
    # TensorRT-LLM's KV pool is 90% of what the weights and runtime leave
    assert em.kv_capacity_tokens(trt, mem, 0.9) == pytest.approx(0.9 * (mem - fixed) * 1e9 / trt.w.kv_bytes_per_token)
    # more GPUs: less weight per GPU, more KV on each
    assert em.kv_capacity_tokens(_q(cat, "tensorrt-llm", n=2), mem, 0.9) > 2 * em.kv_capacity_tokens(trt, mem, 0.9)


def test_weights_that_fill_the_card_leave_no_kv(cat):
    q = _q(cat, "tensorrt-llm", gpu="l4", prec="bf16")
    mem = cat.gpu("l4").memory_gb
    assert q.w.weights_gb > mem
    assert em.kv_capacity_tokens(q, mem, 0.9) == 0.0
    assert em.serving_batch(q, mem, 0.9, 128, 128, None) == 1.0
    assert em.usable_gb(q, mem, 0.9) == mem  # never more than the card
    out = advisor.predict(model="llama3.1-70b", gpu="l4", engine="tensorrt-llm", precision="bf16")
    assert not out["fits"] and f"{mem:.3g} GB usable" in out["reason"]


def test_fits_follows_each_engines_rule(cat):
    """The API's fit verdict and its reason use the engine's own rule: a 70B FP8 on one H100 is over vLLM's 90% of
    the card, but within TensorRT-LLM's weights + 90% of the rest, or not, as the numbers say."""
    for engine in ("vllm", "tensorrt-llm"):
        out = advisor.predict(model="llama3.1-70b", gpu="h100-sxm", engine=engine, precision="fp8", prompt_len=512,
                              gen_len=128)
        q = _q(cat, engine)
        usable = em.usable_gb(q, cat.gpu("h100-sxm").memory_gb, 0.9)
        assert out["fits"] == (out["peak_mem_gb"]["value"] <= usable)
        if not out["fits"]:
            assert f"{usable:.3g} GB usable" in out["reason"] and engine in out["reason"]
