"""llama.cpp's builds and splits in the engine cost model: attention without flash attention, the row split's
synchronization, the layer split's prefill pipeline, older builds' prompt and decode kernels (engines.yaml), and the SM-bound weight streaming."""
import numpy as np
import pandas as pd
import pytest

from models import engine_speed as es
from models.candidate import Candidate
from models.engine_design import design
from profiles import load


@pytest.fixture(scope="module")
def cat():
    return load()


def _q(cat, prec="gguf-q4_k_m", n=1, split=None, fa=True, gpu="rtx3090"):
    eng = cat.engines["llama.cpp"]
    q = es.query(cat, cat.gpu(gpu), cat.llm("llama3.1-8b"), Candidate(prec), eng, n, split, fa)
    return q, es.arrays(q), es.row_params(es.prior_params([q.kernel]), q.kernel)


def test_without_flash_attention_the_scores_cost_grows_with_the_prompt(cat):
    q, on, p = _q(cat)
    _, off, _ = _q(cat, fa=False)
    assert on["SB"] == 0.0 and off["SB"] == es.NONFUSED_SCORE_BYTES * q.w.layers * 32  # 32 query heads
    ratio = [float(es.prefill_s(off, p, 1, n) / es.prefill_s(on, p, 1, n)) for n in (512, 2048, 8192)]
    assert 1.0 < ratio[0] < ratio[1] < ratio[2]
    # at least the scores' bytes at the datasheet bandwidth
    pairs = 8192 * 8192 / 2
    assert es.prefill_s(off, p, 1, 8192) - es.prefill_s(on, p, 1, 8192) >= pairs * off["SB"] / q.bw


def test_a_row_split_pays_a_synchronization_per_projection_and_gpu(cat):
    _, one, p = _q(cat)
    steps = {n: float(es.decode_step_s(_q(cat, n=n, split="row")[1], p, 1, 1024)) for n in (2, 3, 6)}
    sync = {n: float(es.row_sync_s(_q(cat, n=n, split="row")[1], p)) for n in (2, 3, 6)}
    assert sync[2] < sync[3] < sync[6]
    expect = 32 * es.ROW_SPLIT_MATMULS * 2 * 6 * es.ALLREDUCE_LATENCY_S * p["row_sync"]
    assert sync[6] == pytest.approx(expect)
    assert steps[6] > steps[2]  # with these GPUs' links, more GPUs make a token slower, as published
    assert es.row_sync_s(_q(cat, n=2, split="layer")[1], p) == 0.0 and es.row_sync_s(one, p) == 0.0


def test_a_layer_split_pipelines_the_chunks_of_one_call(cat):
    _, one, p = _q(cat, "gguf-f16")
    chunk = one["chunk"]
    for n in (2, 4, 8):
        _, a, _ = _q(cat, "gguf-f16", n=n, split="layer")
        # one chunk: nothing to pipeline; k chunks of one call: (k + n - 1) stages of 1/n of a chunk
        assert es.prefill_s(a, p, 1, chunk) == pytest.approx(float(es.prefill_s(one, p, 1, chunk)), rel=1e-9)
        k = a["call"] / chunk
        t1 = float(es.prefill_s(one, p, 1, a["call"]))
        assert float(es.prefill_s(a, p, 1, a["call"])) == pytest.approx(t1 * (k + n - 1) / (n * k), rel=1e-9)
        # two calls drain the pipeline twice
        t2 = float(es.prefill_s(one, p, 1, 2 * a["call"]))
        assert float(es.prefill_s(a, p, 1, 2 * a["call"])) == pytest.approx(t2 * (k + n - 1) / (n * k), rel=1e-9)


def test_an_older_build_prefills_quantized_types_through_the_fp16_gemm(cat):
    eng = cat.engines["llama.cpp"]
    assert eng.earlier_kernel("gguf-q4_k_m", "sm86", "prefill", "2024-05") == (eng.kernel("gguf-f16", "sm86"), 4.0)
    assert eng.earlier_kernel("gguf-q4_k_m", "sm86", "prefill", "2024-07-01") is None
    assert eng.earlier_kernel("gguf-q4_k_m", "sm86", "decode", "2024-06") is None
    assert eng.earlier_kernel("gguf-q4_k_m", "sm86", "prefill", None) is None  # undated: today's kernel
    # today's build with the old path forced (measured rows carry their build flags)
    flags = "-DGGML_CUDA=ON -DGGML_CUDA_FORCE_CUBLAS=ON"
    assert eng.earlier_kernel("gguf-q8_0", "sm90", "prefill", "2026-12-01", flags) == ("ggml-f16", 4.0)
    assert eng.earlier_kernel("gguf-q8_0", "sm90", "prefill", "2026-12-01", "-DGGML_CUDA=ON") is None
    assert eng.earlier_kernel("gguf-q8_0", "sm90", "decode", "2026-12-01", flags) is None
    # the May 2024 tree (its option name LLAMA_CUDA): the quantized prompt path and its own decode kernels
    old = "-DLLAMA_CUDA=ON -DCMAKE_BUILD_TYPE=Release"
    assert eng.earlier_kernel("gguf-q8_0", "sm90", "prefill", "2026-12-02", old) == ("ggml-f16", 4.0)
    assert eng.earlier_kernel("gguf-f16", "sm90", "decode", "2026-12-02", old) == ("ggml-f16~2405", None)
    assert eng.earlier_kernel("gguf-q4_k_m", "sm86", "decode", "2024-05") == ("ggml-q4_k~2405", None)
    base = {"engine": "llama.cpp", "gpu": "rtx3090", "model": "llama3.1-8b", "precision": "gguf-q4_k_m",
            "num_gpus": 1, "parallel": "none", "kv_dtype": "fp16", "batch": 1, "prompt_len": 512, "gen_len": None,
            "depth": 0, "metric": "prefill_tok_s", "value": 3000.0, "source_id": "s", "kind": "published"}
    rows = pd.DataFrame([{**base, "date_published": "2024-05"}, {**base, "date_published": "2024-09"},
                         {**base, "date_published": "2024-05", "metric": "decode_tok_s", "prompt_len": None,
                          "gen_len": 128, "value": 100.0},
                         {**base, "date_published": "2024-05", "flash_attn": "off"}])
    d = design(rows, "llama.cpp", cat)
    assert list(d.kernel) == ["ggml-f16", "ggml-q4_k", "ggml-q4_k~2405", "ggml-f16"]
    assert d.a["DQB"][0] > 0 and d.a["DQB"][1] == 0 and d.a["DQB"][2] == 0
    assert d.a["peak"][0] == es.dtype_peak_flops(cat.gpu("rtx3090"), "fp16acc") != d.a["peak"][1]
    assert list(d.a["SB"] > 0) == [False, False, False, True]
    assert np.all(np.isfinite(d.y))


def test_an_earlier_builds_kernel_fits_only_its_own_parameters(cat):
    """``<kernel>~<tag>`` has its own bytes per SM cycle and per-layer cost; every other efficiency, and the
    per-GPU offsets, are today's kernel's (models/engine_speed.py EARLIER_OWN_PARAMS)."""
    from models.engine_fit import _layout
    lay = _layout(["ggml-f16~2405"], [("ggml-f16~2405", "h200")])
    own = {p for p, k, a in lay if k == "ggml-f16~2405"}
    assert own == set(es.EARLIER_OWN_PARAMS)
    assert {p for p, k, a in lay if k == "ggml-f16" and a is None} == set(es.KERNEL_PARAMS)
    assert {(k, a) for _, k, a in lay if a} == {("ggml-f16", "h200")}
    params = {"kernels": {"ggml-f16": {"e_bw": 0.8, "b_sm": 40.0, "layer_us": 9.0},
                          "ggml-f16~2405": {"b_sm": 6.0, "layer_us": 30.0}},
              "arch": {"ggml-f16@h200": {"e_bw": 0.5}}}
    r = es.row_params(params, "ggml-f16~2405", "h200")
    assert r["b_sm"] == 6.0 and r["layer_us"] == 30.0 and r["e_bw"] == pytest.approx(0.4)
    assert es.row_params(params, "ggml-f16", "h200")["b_sm"] == 40.0


def test_a_kernel_short_of_bytes_in_flight_is_bound_by_its_sms(cat):
    """t_sm = W / (SMs x clock x b_sm): with few bytes per SM cycle a decode step is slower on a GPU with fewer
    SM cycles even at the same bandwidth; with many it is bandwidth-bound (SMs do not matter)."""
    _, a, p0 = _q(cat, "gguf-f16", gpu="h200")
    assert a["smc"] == pytest.approx(132 * 1980e6)
    fast, slow = dict(p0, b_sm=1000.0), dict(p0, b_sm=4.0)
    fewer = dict(a, smc=a["smc"] / 2)
    t = lambda aa, pp: float(es.decode_step_s(aa, pp, 1.0, 512.0))  # noqa: E731
    assert t(fewer, fast) == pytest.approx(t(a, fast), rel=0.01)
    assert t(fewer, slow) > 1.5 * t(a, slow)
    assert t(a, slow) >= a["W"] / (a["smc"] * 4.0)
    no_sm = dict(a, smc=0.0)  # a GPU the catalog has no SM count or clock for: no such bound
    assert t(no_sm, slow) == pytest.approx(t(a, fast), rel=0.01)
