"""The engine cost model: physics bounds, and a fit that recovers known efficiencies."""
import numpy as np
import pytest

from models import engine_fit as ef
from models import engine_intervals as ei
from models import engine_validate as ev
from models import engine_speed as es
from models.candidate import Candidate
from profiles import load


@pytest.fixture(scope="module")
def cat():
    return load()


def test_never_beats_the_roofline_on_any_gpu(cat):
    for g in cat.gpus.values():
        if g.vendor != "nvidia":
            continue
        eng = cat.engines["vllm"]
        q = es.query(cat, g, cat.llm("llama3.1-8b"), Candidate("fp16"), eng)
        a = es.arrays(q)
        best = {k: es.PARAM_PRIORS[k][3] for k in es.ENGINE_PARAMS + es.KERNEL_PARAMS}
        best.update(host_ms=0.0, layer_us=0.0, seq_us=0.0, pre_fix_ms=0.0, c_dq=0.0, layer_exp=1.0, r_gemm=1.0)
        for b in (1, 8, 64, 256):
            assert es.decode_step_s(a, best, b, 2048) >= es.roofline_decode_s(a, b, 2048) * 0.999


def test_fit_recovers_efficiencies_from_synthetic_rows(cat):
    eng = cat.engines["vllm"]
    truth = es.prior_params(["cublas-16"])
    truth["kernels"]["cublas-16"].update(e_bw=0.82, e_pre=0.6)
    rows = []
    for gid in ("h100-sxm", "a100-80g-sxm", "l40s"):
        q = es.query(cat, cat.gpu(gid), cat.llm("llama3.1-8b"), Candidate("bf16"), eng)
        a, p = es.arrays(q), es.row_params(truth, q.kernel)
        for b in (1, 4, 16):
            rows.append((gid, a, "tpot_ms", b, 512, 128, float(es.decode_step_s(a, p, b, 512 + 64)) * 1e3))
        rows.append((gid, a, "prefill_tok_s", 1, 4096, 0, 4096 / float(es.prefill_s(a, p, 1, 4096))))
    arr = {k: np.array([r[1][k] for r in rows], float) for k in rows[0][1]}
    n = len(rows)
    d = ef.Design("vllm", arr, np.array([r[2] for r in rows], object), np.array([r[3] for r in rows], float),
                  np.array([r[4] for r in rows], float), np.array([r[5] for r in rows], float), np.zeros(n),
                  np.array([r[6] for r in rows], float), np.array(["cublas-16"] * n, object),
                  np.array([f"s{i % 3}" for i in range(n)], object), np.array(["sm90"] * n, object),
                  np.array([r[0] for r in rows], object), np.array(["published"] * n, object), np.arange(n))
    fit = ef.fit_params(d, prior_weight=0.01)
    for gid in ("h100-sxm", "a100-80g-sxm", "l40s"):  # the kernel's efficiency with the GPU's offset
        assert abs(es.row_params(fit, "cublas-16", gid)["e_bw"] - 0.82) < 0.05
    pred = ef.predict_design(fit, d)
    assert np.median(np.abs(pred / d.y - 1)) < 0.03
    res = ev.validate_engine(d, nested=False)
    assert res["all"]["all"]["n"] == n


def test_widening_for_unseen_kernel_and_arch():
    dom = {"cublas-16": ["sm90"]}
    assert ei.widen_factor(dom, "cublas-16", "sm90")[0] == 1.0
    assert ei.widen_factor(dom, "cublas-16", "sm80")[0] > 1.0
    assert ei.widen_factor(dom, "marlin-int4", "sm90")[0] > ei.widen_factor(dom, "cublas-16", "sm80")[0]


def test_bitsandbytes_pays_for_its_dequantized_copy_beyond_one_row(cat):
    """bitsandbytes takes its GEMV for one row only; for more rows it writes and reads a 16-bit copy of
    each matrix, so going from 1 to 2 rows costs at least those bytes at the datasheet bandwidth, and a
    4-bit bnb step at batch 8 moves more bytes than a 16-bit one."""
    g, llm, eng = cat.gpu("h100-sxm"), cat.llm("llama3.1-8b"), cat.engines["vllm"]
    q = es.query(cat, g, llm, Candidate("bnb-nf4"), eng)
    assert q.kernel == "bnb"
    a, p = es.arrays(q), es.row_params(es.prior_params([q.kernel]), q.kernel)
    copy_s = 4.0 * q.w.linear_weights / q.bw
    assert es.decode_step_s(a, p, 2, 1024) - es.decode_step_s(a, p, 1, 1024) >= copy_s
    assert es.prefill_s(a, p, 1, 512) >= copy_s
    q16 = es.query(cat, g, llm, Candidate("fp16"), eng)
    assert a["W"] + a["DQB"] > es.arrays(q16)["W"]
    assert es.arrays(q16)["DQB"] == 0.0


def test_intervals_follow_the_kind_of_evidence():
    """A query on a GPU this project measured gets the measured rows' quantile; elsewhere the published
    rows' (which are wider: many builds, many hosts)."""
    rng = np.random.default_rng(0)
    groups = np.array(["decode"] * 60)
    kinds = np.array(["measured"] * 30 + ["published"] * 30)
    res = np.concatenate([rng.normal(0, 0.05, 30), rng.normal(0, 0.5, 30)])
    q = ei.conformal_q(res, groups, kinds)
    assert ei.q_for(q, "decode", "measured") < q["decode"] < ei.q_for(q, "decode", "published")
    assert ei.q_for(ei.conformal_q(res, groups), "decode", "measured") == q["decode"]  # no kinds: pooled


def test_a_kernel_never_seen_on_the_gpu_gets_the_novel_quantile():
    """Mondrian intervals: a published row whose kernel the training rows never ran on its GPU is 'novel'
    and gets the novel rows' own (wider) quantile; measured rows stay measured."""
    seen = ei.kernel_gpus(["marlin", "marlin", "cublas"], ["h100-sxm", "a100-80g-sxm", "h100-sxm"])
    assert seen == {"marlin": ["a100-80g-sxm", "h100-sxm"], "cublas": ["h100-sxm"]}
    kinds = ei.row_kinds(["published", "published", "measured"], ["cublas", "marlin", "cublas"],
                         ["a100-80g-sxm", "h100-sxm", "l4"], seen)
    assert list(kinds) == ["novel", "published", "measured"]
    assert ei.evidence_kind("l4", ["l4"], "cublas", seen) == "measured"
    assert ei.evidence_kind("l4", [], "cublas") == "published"  # no record of pairs: not novel
    rng = np.random.default_rng(1)
    res = np.concatenate([rng.normal(0, 0.1, 40), rng.normal(0, 0.6, 40)])
    q = ei.conformal_q(res, np.array(["decode"] * 80), np.array(["published"] * 40 + ["novel"] * 40))
    assert ei.q_for(q, "decode", "published") == q["decode"] < ei.q_for(q, "decode", "novel")
    # novel rows that happen to fit better never narrow a novel query's interval below the published one
    calm = ei.conformal_q(res[::-1], np.array(["decode"] * 80), np.array(["published"] * 40 + ["novel"] * 40))
    assert ei.q_for(calm, "decode", "novel") == ei.q_for(calm, "decode", "published") > calm["novel"]["decode"]


def test_a_stated_decode_context_replaces_the_one_from_lengths(cat):
    import pandas as pd

    base = {"engine": "vllm", "gpu": "h100-sxm", "model": "llama3.1-8b", "precision": "bf16", "kv_dtype": "fp16",
            "num_gpus": 1, "parallel": "none", "batch": 256, "gen_len": 400, "depth": 0, "metric": "tpot_ms",
            "value": 30.0, "source_id": "s", "kind": "published"}
    df = pd.DataFrame([base, {**base, "prompt_len_est": 200}, {**base, "prompt_len_est": 200, "decode_ctx": 1200}])
    d = ef.design(df, "vllm", cat)
    assert list(d.prompt) == [0, 200, 200]  # an estimate fills a missing input length
    assert list(d.ctx) == [200, 400, 1200]  # depth + prompt + gen / 2 unless stated
    t = ef.predict_design(ef.load_params()["engines"]["vllm"]["params"], d)
    assert t[0] < t[1] < t[2]  # more KV read per step at batch 256


def test_a_clients_printed_token_counts_replace_the_nominal_lengths(cat):
    import pandas as pd

    base = {"engine": "sglang", "gpu": "h100-sxm", "model": "llama3.1-8b", "precision": "bf16", "kv_dtype": "fp16",
            "num_gpus": 1, "parallel": "none", "batch": 1, "prompt_len": 8000, "gen_len": 1000, "depth": 0,
            "metric": "ttft_ms", "value": 300.0, "source_id": "s", "kind": "published"}
    df = pd.DataFrame([base, {**base, "notes": "random dataset (actual lengths sampled below nominal: 41941 input / "
                                               "4220 output tokens over 10 requests), max concurrency 1"}])
    d = ef.design(df, "sglang", cat)
    assert list(d.prompt) == [8000, pytest.approx(4194.1)] and list(d.gen) == [1000, 422]
    t = ef.predict_design(ef.load_params()["engines"]["sglang"]["params"], d)
    assert t[1] < t[0]  # half the prompt: a shorter first token


def test_serving_tpot_carries_the_other_requests_prompts(cat):
    llm, gpu = cat.llm("llama3.1-8b"), cat.gpu("h100-sxm")
    p = ef.load_params()["engines"]["vllm"]["params"]

    def tpot(engine, batch, prompt):
        q = es.query(cat, gpu, llm, Candidate("bf16" if engine != "llama.cpp" else "gguf-f16"), cat.engines[engine])
        a = es.arrays(q)
        return float(es.metric_values(a, es.row_params(p, q.kernel, gpu.id), np.array(["tpot_ms"]), batch,
                                      prompt, 256.0, 0.0, 512.0)[0])
    # one request alone: nobody else's prompt to fold in
    assert tpot("vllm", 1.0, 4096.0) == pytest.approx(tpot("vllm", 1.0, 64.0))
    # 64 concurrent: 63 other prompts of 4,096 tokens per 256 steps ride in each forward
    assert tpot("vllm", 64.0, 4096.0) > 1.5 * tpot("vllm", 64.0, 64.0)
    # llama.cpp's benchmarks time decode alone
    assert tpot("llama.cpp", 64.0, 4096.0) == pytest.approx(tpot("llama.cpp", 64.0, 64.0))


def test_a_request_latency_of_one_output_token_is_a_prefill_figure():
    import numpy as np

    from models.engine_speed import metric_groups
    g = metric_groups(np.array(["request_latency_s", "request_latency_s", "ttft_ms", "tpot_ms"]),
                      np.array([1.0, 128.0, 128.0, 128.0]))
    assert g.tolist() == ["prefill", "throughput", "prefill", "decode"]


def test_ttft_adds_the_per_request_time_outside_the_forwards(cat):
    q = es.query(cat, cat.gpu("h100-sxm"), cat.llm("llama3.1-8b"), Candidate("bf16"), cat.engines["vllm"])
    a, p = es.arrays(q), es.row_params(es.prior_params([q.kernel]), q.kernel)
    args = (np.array(["ttft_ms"]), np.array([1.0]), np.array([512.0]), np.array([128.0]), np.array([0.0]))
    with_req = es.metric_values(a, {**p, "req_ms": 40.0}, *args)[0]
    without = es.metric_values(a, {**p, "req_ms": 0.0}, *args)[0]
    assert with_req - without == pytest.approx(40.0)


def test_predicted_ttft_carries_the_fitted_request_time():
    import advisor
    from models.engine_fit import load_params
    r = advisor.predict(model="llama3.1-8b", gpu="h100-sxm", engine="vllm", precision="bf16", batch=1,
                        prompt_len=512, gen_len=128)
    req = load_params()["engines"]["vllm"]["params"]["req_ms"]
    assert req > 0 and "per request outside the forwards" in r["ttft_ms"]["detail"]
    pre_ms = 512 / r["prefill_tok_s"]["value"] * 1e3
    assert r["ttft_ms"]["value"] == pytest.approx(pre_ms + r["tpot_ms"]["value"] + req, rel=1e-6)


def _trt_rows(**kw):
    import pandas as pd

    base = {"engine": "tensorrt-llm", "gpu": "h100-sxm", "model": "llama3.1-8b", "precision": "bf16",
            "kv_dtype": "fp16", "num_gpus": 1, "parallel": "none", "batch": 16, "prompt_len": 2048, "gen_len": 128,
            "depth": 0, "metric": "tpot_ms", "value": 10.0, "source_id": "s", "kind": "published", "stat": "mean"}
    return pd.DataFrame([{**base, **r} for r in kw["rows"]])


def test_a_static_batch_times_its_own_steps_and_prefills_the_whole_batch(cat):
    df = _trt_rows(rows=[{}, {"notes": "static batch 16"}, {"metric": "ttft_ms", "batch": 1},
                         {"metric": "ttft_ms", "notes": "static batch 16"}])
    d = ef.design(df, "tensorrt-llm", cat)
    assert list(d.metric) == ["tpot_ms", "step_ms", "ttft_ms", "batch_ttft_ms"]
    t = ef.predict_design(ef.load_params()["engines"]["tensorrt-llm"]["params"], d)
    assert t[1] < t[0]  # no other request's prompt rides in a static batch's steps
    assert t[3] > 4 * t[2]  # sixteen prompts of 2,048 tokens before the first token, not one


def test_a_wave_clients_mean_ttft_at_concurrency_is_not_read_as_one_prefill(cat):
    df = _trt_rows(rows=[{"metric": "ttft_ms", "batch": 1, "notes": "GenAI-Perf"},
                         {"metric": "ttft_ms", "batch": 4, "prompt_len": 200, "notes": "GenAI-Perf"},
                         {"metric": "ttft_ms", "batch": 4, "prompt_len": 200, "notes": "GenAI-Perf", "stat": "p50"},
                         {"metric": "ttft_ms", "batch": 4, "prompt_len": 200}])
    d = ef.design(df, "tensorrt-llm", cat)
    assert len(d) == 3 and sum(d.skipped.values()) == 1


def test_repeated_prompts_count_out_prefill_and_throughput_but_keep_decode(cat):
    cached = "the same prompts repeat, so the prefix cache serves their prefill"
    df = _trt_rows(rows=[{"notes": cached, "batch": 1, **m} for m in (
        {}, {"metric": "decode_tok_s", "value": 100.0}, {"metric": "ttft_ms"}, {"metric": "output_tok_s", "value": 90.0})])
    d = ef.design(df, "tensorrt-llm", cat)
    assert list(d.metric) == ["tpot_ms", "decode_tok_s"]
    assert d.skipped == {"repeated prompts: the prefix cache serves the prefill (not modelled)": 2}


def test_a_derived_running_batch_replaces_the_requests_sent(cat):
    """An offline call of 100 requests whose outputs end at EOS runs fewer at a time: the row's running_batch is read
    (README), and a row without it keeps its batch."""
    df = _trt_rows(rows=[{"metric": "output_tok_s", "value": 5000.0, "batch": 100, "running_batch": 69.7},
                         {"metric": "output_tok_s", "value": 5000.0, "batch": 100}])
    d = ef.design(df, "tensorrt-llm", cat)
    assert list(d.batch) == [69.7, 100.0]
    t = ef.predict_design(ef.load_params()["engines"]["tensorrt-llm"]["params"], d)
    assert t[0] < t[1]  # fewer sequences per step: less throughput


def test_a_throughput_row_runs_no_more_requests_than_the_kv_cache_holds(cat):
    """As for TPOT rows: a concurrency beyond the KV cache's capacity in requests is read at that capacity."""
    from models import engine_memory as em
    df = _trt_rows(rows=[{"metric": "output_tok_s", "value": 5000.0, "batch": b} for b in (8, 5000)])
    d = ef.design(df, "tensorrt-llm", cat)
    eng, gpu, llm = cat.engines["tensorrt-llm"], cat.gpu("h100-sxm"), cat.llm("llama3.1-8b")
    q = es.query(cat, gpu, llm, Candidate("bf16"), eng)
    cap = em.kv_capacity_tokens(q, gpu.memory_gb, float(eng.get("memory_fraction", 0.9))) / (2048 + 128)
    assert d.batch[0] == 8 and 8 < cap < 5000 and d.batch[1] == pytest.approx(cap)


def test_a_latencys_tail_percentile_is_counted_out(cat):
    df = _trt_rows(rows=[{"stat": s, "batch": 1} for s in ("p50", "mean", "", "p90", "P99", "max")]
                   + [{"stat": "p99", "metric": "request_latency_s", "value": 1.0},
                      {"stat": "p99", "metric": "output_tok_s", "value": 900.0}])  # a throughput has no tail
    d = ef.design(df, "tensorrt-llm", cat)
    assert len(d) == 4 and d.skipped == {"a tail percentile of latency (the cost model predicts the typical request)": 4}


def test_a_bursts_latencies_are_counted_out_and_its_throughput_kept(cat):
    inf = "random dataset, 500 prompts, request rate inf"
    df = _trt_rows(rows=[{"batch": None, "notes": inf}, {"batch": None, "notes": inf, "metric": "ttft_ms"},
                         {"batch": None, "notes": inf, "metric": "output_tok_s", "value": 5000.0},
                         {"batch": None, "notes": "request rate 4"}])
    d = ef.design(df, "tensorrt-llm", cat)
    assert list(d.metric) == ["output_tok_s"] and d.batch[0] > 16  # the engine's own batch (its KV cache)
    assert d.skipped == {"latency of a burst (every request sent at once): not the steady state modelled": 2,
                         "latency under a request rate with no stated concurrency": 1}


def test_a_server_pays_its_serving_loop_per_step_and_an_in_process_benchmark_does_not(cat):
    df = _trt_rows(rows=[{"notes": "GenAI-Perf against NIM"}, {"notes": "static batch 16 (gptSessionBenchmark)"},
                         {"notes": "trtllm-bench throughput; RTX 6000 Pro Blackwell Server Edition"}, {"notes": ""},
                         {"notes": "in-process engine (no HTTP server)"}, {"notes": "see https://example.org/run"},
                         {"notes": "OpenAI-compatible HTTP endpoint"}])
    d = ef.design(df, "tensorrt-llm", cat)
    # the row's own client; naming none reads as in process, and a URL names no client
    assert d.a["served"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    llm, gpu = cat.llm("llama3.1-8b"), cat.gpu("h100-sxm")
    asked = {e: es.arrays(es.query(cat, gpu, llm, Candidate("bf16" if e != "llama.cpp" else "gguf-f16"),
                                   cat.engines[e]))["served"] for e in ("vllm", "tensorrt-llm", "llama.cpp")}
    assert asked == {"vllm": 1.0, "tensorrt-llm": 1.0, "llama.cpp": 0.0}  # llama.cpp is answered as its benchmarks run
    q = es.query(cat, gpu, llm, Candidate("bf16"), cat.engines["vllm"])
    a, p = es.arrays(q), {**es.row_params(es.prior_params([q.kernel]), q.kernel), "serve_ms": 2.0}
    gap = es.decode_step_s(a, p, 4.0, 1024.0) - es.decode_step_s({**a, "served": 0.0}, p, 4.0, 1024.0)
    assert gap == pytest.approx(2.0e-3)


def test_an_engine_without_a_batch_one_gemv_steps_smoothly_from_one_to_two(cat):
    llm, gpu = cat.llm("llama3.1-8b"), cat.gpu("h100-sxm")
    p = {**ef.load_params()["engines"]["vllm"]["params"]}

    def step(engine, batch):
        q = es.query(cat, gpu, llm, Candidate("bf16"), cat.engines[engine])
        pr = es.row_params(p, "cublas-16", gpu.id)
        pr["r_gemm"] = 0.5
        return float(es.decode_step_s(es.arrays(q), pr, np.array([batch]), 512.0)[0])
    assert cat.engines["tensorrt-llm"].get("decode_gemv") is False
    assert step("vllm", 2.0) > 1.5 * step("vllm", 1.0)  # the GEMM above batch 1 streams at r_gemm
    assert step("tensorrt-llm", 2.0) < 1.05 * step("tensorrt-llm", 1.0)


def test_a_tensor_parallel_step_pays_the_engines_fitted_all_reduce_latency(cat):
    llm, gpu = cat.llm("llama3.1-70b"), cat.gpu("h100-sxm")
    q = es.query(cat, gpu, llm, Candidate("bf16"), cat.engines["tensorrt-llm"], num_gpus=4)
    a = es.arrays(q)
    one = es.allreduce_s(a, 1.0, {"ar_lat": 1.0})
    assert es.allreduce_s(a, 1.0, {}) == pytest.approx(one)  # the prior: the measured NCCL latency
    # 80 layers x 2 all-reduces, each 3 latencies more
    assert es.allreduce_s(a, 1.0, {"ar_lat": 4.0}) - one == pytest.approx(160 * 3 * es.ALLREDUCE_LATENCY_S)


def test_a_prompt_runs_the_lm_head_once_per_sequence_and_a_decode_step_once_per_token(cat):
    q = es.query(cat, cat.gpu("l4"), cat.llm("qwen3-0.6b"), Candidate("bf16"), cat.engines["vllm"])
    a = es.arrays(q)
    assert 0 < a["FH"] < a["F"] and es.prompt_flops(a) == pytest.approx(a["F"] - a["FH"])
    every = {**a, "FH": 0.0}  # as if the lm_head ran on every prompt token
    p = es.row_params(es.prior_params([q.kernel]), q.kernel)
    assert es.prefill_s(a, p, 1.0, 4096.0) < es.prefill_s(every, p, 1.0, 4096.0)
    assert es.decode_step_s(a, p, 8.0, 512.0) == pytest.approx(es.decode_step_s(every, p, 8.0, 512.0))
    # the floor counts the same FLOPs: the lm_head of each sequence, the projections of every token
    t = es.roofline_prefill_s(a, 2.0, 4096.0)
    flops = 2 * 4096 * (es.prompt_flops(a) + 4096 / 2 * a["A"]) + 2 * a["FH"]
    assert t == pytest.approx(max(a["W"] / a["bw"], flops / max(a["peak"], a["peak16"])))
