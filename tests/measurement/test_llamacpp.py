"""llama.cpp measurement (issue 12): parsing, roofline, GGUF architecture mapping, deadlines.

CPU only; needs neither a GPU nor the gguf package (the one test that writes a GGUF skips without it).
"""
import csv
import json
import math

import pytest

from measurement.llamacpp import bench as B
from measurement.llamacpp.build import _changelog_commit, _ggml_version, engine_version_string
from measurement.llamacpp.gguf_arch import arch_spec, kv_bytes_per_token, llama3_rope_freqs
from profiles import load

LB_JSONL = (
    '{"build_commit": "0c1e570", "build_number": 0, "model_type": "llama 8B F16", "model_size": 16060522496, '
    '"model_n_params": 8030261248, "n_batch": 2048, "n_ubatch": 512, "type_k": "f16", "type_v": "f16", '
    '"n_gpu_layers": 99, "flash_attn": true, "n_prompt": 0, "n_gen": 128, "n_depth": 0, '
    '"test_time": "2026-12-01T05:00:00Z", "avg_ns": 560000000, "stddev_ns": 1000, "avg_ts": 229.0, '
    '"stddev_ts": 3.0, "samples_ns": [ 600000000, 560000000, 558000000, 562000000 ], '
    '"samples_ts": [ 213.3, 228.6, 229.4, 227.8 ]}\n'
    '{"build_commit": "0c1e570", "model_size": 16060522496, "model_n_params": 8030261248, "type_k": "q8_0", '
    '"n_prompt": 512, "n_gen": 0, "n_depth": 4096, "avg_ns": 50000000, "avg_ts": 10000.0, '
    '"samples_ns": [ 70000000, 50000000, 51000000, 49000000 ], "samples_ts": [ 7314.3, 10240.0, 10039.2, 10449.0 ]}\n'
)

BB_MD = """
main: n_kv_max = 40960, n_batch = 2048, n_ubatch = 512, flash_attn = 1, is_pp_shared = 0, n_gpu_layers = 99

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   512 |    128 |    1 |    640 |    0.060 |  8533.33 |    0.600 |   213.33 |    0.660 |   969.70 |
|   512 |    128 |    8 |   5120 |    0.400 | 10240.00 |    0.800 |  1280.00 |    1.200 |  4266.67 |
|   512 |    128 |    1 |    640 |    0.050 | 10240.00 |    0.560 |   228.57 |    0.610 | 1049.18 |
|   512 |    128 |    8 |   5120 |    0.390 | 10502.56 |    0.790 |  1296.20 |    1.180 |  4338.98 |
|   512 |    128 |    1 |    640 |    0.051 | 10039.22 |    0.558 |   229.39 |    0.609 | 1050.90 |
|   512 |    128 |    8 |   5120 |    0.395 | 10369.62 |    0.795 |  1288.05 |    1.190 |  4302.52 |

llama_perf_context_print:        load time =    1234.56 ms
"""


@pytest.fixture(scope="module")
def cat():
    return load()


def facts_8b(cat, qtype="F16", tensor_bytes=None):
    llm = cat.llm("llama3.1-8b")
    s = arch_spec(llm)
    emb = s.embedding_params * 2
    tb = tensor_bytes or (s.n_params * 2 + 64 * 2)
    return B.ModelFacts(model="llama3.1-8b", qtype=qtype, file_bytes=tb + 9_000_000, tensor_bytes=tb, embd_bytes=emb,
                        tied=False, n_params=s.n_params, block_params=s.layer_params, head_params=s.output_params,
                        layers=32, heads=32, head_dim=128, kv_heads=8)


# ------------------------------------------------------------------------------------------------ parsing
def test_llama_bench_jsonl_to_measured():
    recs = B.parse_llama_bench_output(LB_JSONL)
    assert len(recs) == 2
    tg = B.parse_llama_bench_record(recs[0])
    assert len(tg) == 1 and tg[0].metric == "decode_tok_s"
    m = tg[0]
    assert m.value == pytest.approx(228.6)  # median of the 3 kept after dropping the warm-up 213.3
    assert m.n_reps == 3 and m.batch == 1 and m.gen_len == 128 and m.prompt_len is None and m.depth == 0
    assert m.window_s == pytest.approx(1.68)
    pp = B.parse_llama_bench_record(recs[1])[0]
    assert pp.metric == "prefill_tok_s" and pp.prompt_len == 512 and pp.depth == 4096 and pp.kv == "q8_0"
    assert pp.value == pytest.approx(10240.0)
    assert "pp512 @ d4096" in pp.location


def test_llama_bench_json_array_and_pg_skipped():
    arr = json.dumps([{"n_prompt": 512, "n_gen": 128, "samples_ts": [1, 2, 3]},
                      {"n_prompt": 0, "n_gen": 64, "samples_ts": [100.0]}])
    recs = B.parse_llama_bench_output(arr)
    assert len(recs) == 2
    assert B.parse_llama_bench_record(recs[0]) == []  # pp+tg together: not separable
    one = B.parse_llama_bench_record(recs[1])[0]
    assert one.value == 100.0 and one.n_reps == 1


def test_batched_bench_table_to_rows():
    recs = B.parse_batched_bench_output(BB_MD)
    assert len(recs) == 6 and recs[0]["pl"] == 1 and recs[1]["n_kv"] == 5120
    ms = B.batched_rows(recs, kv="f16")
    by = {(m.metric, m.batch): m for m in ms}
    assert len(ms) == 6
    out8 = by[("output_tok_s", 8)]
    assert out8.value == pytest.approx((1296.20 + 1288.05) / 2)  # first (warm-up) run dropped
    assert out8.n_reps == 2 and out8.gen_len == 128 and out8.prompt_len == 512
    per = by[("decode_tok_s", 8)]
    assert per.value == pytest.approx(out8.value / 8)
    pre = by[("prefill_tok_s", 1)]
    assert pre.value == pytest.approx((10240.00 + 10039.22) / 2) and pre.gen_len is None


def test_batched_bench_jsonl_line_and_power():
    line = ('{"n_kv_max": 40960, "n_batch": 2048, "n_ubatch": 512, "flash_attn": 1, "is_pp_shared": 0, '
            '"n_gpu_layers": 99, "n_threads": 4, "n_threads_batch": 4, "pp": 512, "tg": 128, "pl": 4, '
            '"n_kv": 2560, "t_pp": 0.2, "speed_pp": 10240.0, "t_tg": 0.7, "speed_tg": 731.4, "t": 0.9, '
            '"speed": 2844.4}')
    r = B.parse_batched_bench_line(line)
    assert r["pl"] == 4 and r["speed_tg"] == 731.4
    assert B.parse_batched_bench_line("| PP | TG |") is None
    recs = [dict(r, power_tg=500.0, power_pp=600.0), dict(r, power_tg=400.0, power_pp=650.0, cpu_job=True)]
    ms = {m.metric: m for m in B.batched_rows(recs)}
    assert ms["output_tok_s"].power_w == 400.0 and ms["prefill_tok_s"].power_w == 650.0
    assert ms["output_tok_s"].cpu_job is True


# ------------------------------------------------------------------------------------------------ roofline
def test_roofline_decode_is_copy_floor(cat):
    f = facts_8b(cat)
    bw, peak = 4300.0, 790.0
    rv = B.roofline(f, "decode_tok_s", 1, 0, 128, 0, "f16", bw, peak)
    kv = f.kv_bytes_per_token("f16") * 64  # average context over tg128
    assert rv == pytest.approx(bw * 1e9 / (f.weight_bytes_read + kv))
    assert 260 < rv < 300  # 8B F16 on ~4.3 TB/s: ~286 tok/s
    # untied: the embedding is gathered, not read
    assert f.weight_bytes_read == f.tensor_bytes - f.embd_bytes
    # deeper context lowers the bound; batches raise the total but not the per-sequence figure
    assert B.roofline(f, "decode_tok_s", 1, 0, 128, 4096, "f16", bw, peak) < rv
    assert B.roofline(f, "output_tok_s", 8, 512, 128, 0, "f16", bw, peak) > 7 * rv
    assert B.roofline(f, "decode_tok_s", 8, 512, 128, 0, "f16", bw, peak) < rv
    # q8_0 / q4_0 caches are smaller
    assert kv_bytes_per_token(cat.llm("llama3.1-8b"), "q4_0") < kv_bytes_per_token(cat.llm("llama3.1-8b"), "f16") / 3


def test_roofline_prefill_is_compute_bound(cat):
    f = facts_8b(cat)
    rv = B.roofline(f, "prefill_tok_s", 1, 512, 0, 0, "f16", 4300.0, 790.0)
    attn = 4.0 * 256 * 32 * 32 * 128
    assert rv == pytest.approx(790e12 / (2 * f.block_params + attn))
    assert B.roofline(f, "prefill_tok_s", 1, 8192, 0, 0, "f16", 4300.0, 790.0) < rv


def test_make_row_flags_above_roofline(cat):
    f = facts_8b(cat)
    ctx = {"engine_version": "llama-cpp-python 0.3.36", "copy_bw_gbps": 4300.0, "peak_tflops_bf16": 790.0,
           "model": "llama3.1-8b", "qtype": "F16", "source_id": "call-1", "command": "llama-bench -p 0"}
    ok = B.Measured("decode_tok_s", 230.0, 1, None, 128, 0, "f16", 3, [229, 230, 231], 1.7, 384, "llama-bench tg128")
    row = B.make_row(ok, f, ctx, avg_power_w=460.0)
    assert row["roofline_flag"] == "" and 0.75 < row["roofline_frac"] < 0.9
    assert row["precision"] == "gguf-f16" and row["kv_dtype"] == "fp16" and row["engine"] == "llama.cpp"
    assert row["j_per_token"] == pytest.approx(2.0) and row["weights"] == "random"
    assert row["gguf_bits_per_weight"] == pytest.approx(16.0, abs=0.01)
    assert set(row) == set(B.COLUMNS)
    bad = B.Measured("decode_tok_s", 400.0, 1, None, 128, 0, "f16", 3, [400] * 3, 1.0, 384, "x")
    row = B.make_row(bad, f, ctx)
    assert row["roofline_flag"] == "ABOVE_ROOFLINE" and row["roofline_frac"] > 1
    # per-sequence decode at batch 8: J/token counts all 8 sequences' tokens
    per = B.Measured("decode_tok_s", 100.0, 8, 512, 128, 0, "f16", 2, [100, 100], 1.0, 1024, "bb", 400.0)
    assert B.make_row(per, f, ctx)["j_per_token"] == pytest.approx(0.5)


def test_row_writer_and_status_row(tmp_path):
    w = B.RowWriter(tmp_path / "rows.csv")
    w.write(B.status_row({"model": "llama3.1-8b", "qtype": "IQ4_XS"}, "unsupported", "needs an imatrix"))
    w.close()
    w = B.RowWriter(tmp_path / "rows.csv")  # appending keeps one header
    w.write(B.status_row({"model": "m", "qtype": "Q4_0"}, "error", "x"))
    w.close()
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    assert [r["status"] for r in rows] == ["unsupported", "error"]
    assert rows[0]["precision"] == "gguf-iq4_xs" and rows[0]["value"] == ""


def test_energy_between():
    s = [(0.0, 0.0), (1.0, 500_000.0), (2.0, 1_000_000.0)]  # 500 W
    assert B.energy_between(s, 0.5, 1.5) == pytest.approx(500.0)
    assert B.energy_between(s, -1.0, 1.0) is None
    assert B.energy_between(s[:1], 0, 1) is None


# ------------------------------------------------------------------------------------------------ GGUF mapping
@pytest.mark.parametrize("mid,arch,tied", [("llama3.1-8b", "llama", False), ("llama3.2-1b", "llama", True),
                                           ("llama3.2-3b", "llama", True), ("qwen2.5-7b", "qwen2", False),
                                           ("mistral-7b", "llama", False), ("llama2-13b", "llama", False),
                                           ("qwen2.5-14b", "qwen2", False)])
def test_arch_spec_matches_catalog(cat, mid, arch, tied):
    llm = cat.llm(mid)
    s = arch_spec(llm)
    assert s.arch == arch and s.tied == tied
    names = {t.name: t for t in s.tensors}
    assert names["token_embd.weight"].shape == (llm.vocab_size, llm.hidden_size)
    assert ("output.weight" in names) == (not tied)
    L = llm.num_hidden_layers
    assert f"blk.{L - 1}.ffn_down.weight" in names and f"blk.{L}.ffn_down.weight" not in names
    hd = llm.head_dim or llm.hidden_size // llm.num_attention_heads
    assert names["blk.0.attn_k.weight"].shape == (llm.num_key_value_heads * hd, llm.hidden_size)
    assert names["blk.0.ffn_down.weight"].shape == (llm.hidden_size, llm.intermediate_size)
    assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2")
    assert s.kv[f"{arch}.vocab_size"] == llm.vocab_size and s.kv[f"{arch}.block_count"] == L
    assert s.kv[f"{arch}.attention.head_count_kv"] == llm.num_key_value_heads
    # the parameter count is the real model's
    assert s.n_params / 1e9 == pytest.approx(llm.published_params_b, rel=0.02)
    assert s.n_params == s.layer_params + s.embedding_params + (0 if tied else s.output_params) + llm.hidden_size


def test_llama3_rope_freqs():
    f = llama3_rope_freqs(128, 500000.0, 8.0)
    assert len(f) == 64 and f[0] == 1.0 and f[-1] == 8.0
    assert all(1.0 <= x <= 8.0 for x in f)


def test_gguf_roundtrip_small(tmp_path):
    gguf = pytest.importorskip("gguf")
    from types import SimpleNamespace

    from measurement.llamacpp.gguf_arch import write_gguf

    # a tiny vocabulary file of the same kind as llama.cpp's models/ggml-vocab-*.gguf
    vw = gguf.GGUFWriter(str(tmp_path / "ggml-vocab-llama-spm.gguf"), "llama")
    vw.add_tokenizer_model("llama")
    vw.add_token_list([f"t{i}" for i in range(10)])
    vw.add_token_scores([0.0] * 10)
    vw.add_token_types([1] * 10)
    vw.write_header_to_file(); vw.write_kv_data_to_file(); vw.write_tensors_to_file(); vw.close()
    llm = SimpleNamespace(id="llama2-tiny", family="llama2", hidden_size=64, num_hidden_layers=2,
                          intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          vocab_size=16, tie_word_embeddings=False, max_position_embeddings=256)
    spec = arch_spec(llm)
    info = write_gguf(spec, tmp_path / "m.gguf", tmp_path, pool_elems=1 << 12)
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert len(r.tensors) == len(spec.tensors)
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    assert len(toks) == 16 and toks[-1] == "[PAD15]"  # padded to vocab_size
    assert info["params"] == spec.n_params
    t = {x.name: x for x in r.tensors}
    assert list(t["blk.0.attn_k.weight"].shape) == [64, 32]  # GGUF order: ne0 = input features


# ------------------------------------------------------------------------------------------------ deadline
def test_deadline_logic():
    now = [100.0]
    d = B.Deadline(60, reserve_s=10, clock=lambda: now[0])
    assert d.remaining() == 60 and d.allows(50) and not d.allows(51)
    now[0] += 30
    assert d.elapsed() == 30 and d.allows(20) and not d.allows(21)
    assert d.timeout_for(5) == 20  # generous (x3, floor 20) but never past the reserve
    assert d.timeout_for(1) == 20
    now[0] += 25
    assert d.timeout_for(100) == 1.0 and not d.allows(0)


def test_versions_from_sdist_text():
    assert _changelog_commit("## [0.3.36]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098\n") == "0c1e57098"
    assert _ggml_version("set(GGML_VERSION_MAJOR 0)\nset(GGML_VERSION_MINOR 25)\nset(GGML_VERSION_PATCH 3)") == "0.25.3"
    s = engine_version_string({"llama_cpp_python": "0.3.36", "llama_cpp_commit": "0c1e57098", "ggml": "0.25.3"})
    assert "0.3.36" in s and "0c1e57098" in s and "0.25.3" in s


def test_plans_order_and_estimates(cat):
    from measurement.llamacpp.run import PLANS, estimate_s

    p = PLANS["8b"]
    assert p[0][:2] == ("llama3.1-8b", "F16") and p[0][2][0]["kind"] == "lb"
    kinds = [b["kind"] for _, _, bs in p for b in bs]
    assert kinds.index("bb") > max(i for i, k in enumerate(kinds[:7]) if k == "lb")  # batch 1 first
    f = facts_8b(cat)
    e = estimate_s(p[0][2][0], f)
    assert 10 < e < 120 and math.isfinite(e)


def _tiny_gguf(path):
    """A hand-made GGUF v3: 3 KV pairs (one string array) and two tensors (F32 [4], Q8_0 [32 x 2])."""
    import struct

    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kv = (s("general.architecture") + struct.pack("<I", 8) + s("llama")
          + s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + s("a") + s("bb") + s("ccc")
          + s("tokenizer.ggml.bos_token_id") + struct.pack("<II", 4, 7))
    ti = (s("output_norm.weight") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<IQ", 0, 0)
          + s("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 32, 2) + struct.pack("<IQ", 8, 32))
    head = b"GGUF" + struct.pack("<IQQ", 3, 2, 3) + kv + ti
    pad = (-len(head)) % 32
    data = b"\0" * 16 + b"\0" * 16 + b"\1" * 68
    path.write_bytes(head + b"\0" * pad + data)


def test_read_tensor_table_and_kv_without_gguf(tmp_path):
    from measurement.llamacpp.gguf_arch import read_kv, read_tensor_table

    _tiny_gguf(tmp_path / "t.gguf")
    tt = read_tensor_table(tmp_path / "t.gguf")
    assert tt["tensors"]["output_norm.weight"] == {"type": 0, "numel": 4, "bytes": 32}  # 16 + padding
    assert tt["tensors"]["token_embd.weight"] == {"type": 8, "numel": 64, "bytes": 68}  # 2 Q8_0 blocks
    kv = read_kv(tmp_path / "t.gguf")
    assert kv["tokenizer.ggml.tokens"] == (9, 8, ["a", "bb", "ccc"])
    assert kv["tokenizer.ggml.bos_token_id"] == (4, None, 7) and "general.architecture" not in kv
