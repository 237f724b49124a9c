"""CPU tests of the small-model quality campaign (tiny model; the real run is on the GPU)."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_corpus_needs_no_torch_and_splits_by_book():
    code = ("import sys, measurement.quality.corpus as c; b = c.load_books(); "
            "assert len(b) == 66 and b[0].abbrev == 'Ge' and b[-1].abbrev == 'Rev'; "
            "assert 'torch' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from measurement.quality import corpus as c

    books = c.load_books()
    spans = sorted(c.SPLITS.values())
    assert spans[0][0] == 1 and spans[-1][1] == 66
    assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:])), "contiguous, disjoint book ranges"
    assert c.split_text("train", books).startswith("In the beginning God created")
    assert c.split_text("validation", books).startswith("Paul, a servant of Jesus Christ")  # Romans 1:1
    test = c.split_text("test", books)
    assert test.startswith("Paul, an apostle of Jesus Christ by the will of God, and Timothy")  # 2 Cor 1:1
    assert test.rstrip().endswith("be with you all. Amen.")  # Revelation 22:21
    assert "In the beginning God created" not in test


def test_tokenizer_roundtrip_and_counts():
    pytest.importorskip("tokenizers")
    from measurement.quality import corpus as c

    tok = c.load_tokenizer()
    assert tok.get_vocab_size() == 4096
    s = "And God said, Let there be light: and there was light.\n"
    assert tok.decode(tok.encode(s).ids) == s
    ids = c.token_splits(tok)
    assert 900_000 < len(ids["train"]) < 1_000_000
    assert len(ids["test"]) > 70_000 and len(ids["validation"]) > 20_000


@pytest.fixture(scope="module")
def tiny_model():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers", minversion="5.0")
    from measurement.quality import model as M

    cfg = M.make_config(M.TINY)
    m = M.build_model(cfg, dtype=torch.float32).eval()
    return m


def test_decode_protocol_matches_full_forward(tiny_model):
    """With the plain cache, prefill + one-token decode scores exactly what one full forward scores."""
    import torch
    import torch.nn.functional as F

    from measurement.quality.evaluate import ppl_decode

    torch.manual_seed(0)
    L, P = 32, 20
    ids = torch.randint(0, tiny_model.config.vocab_size, (3 * L + 5,))
    res = ppl_decode(tiny_model, ids, lambda b: None, seq_len=L, prefix=P, batch_size=2)
    assert res["n_tokens"] == 3 * (L - P) and res["n_windows"] == 3
    wins = ids[: 3 * L].view(3, L)
    with torch.no_grad():
        logits = tiny_model(input_ids=wins, use_cache=False).logits
    nll = F.cross_entropy(logits[:, P - 1: L - 1].reshape(-1, logits.size(-1)), wins[:, P:].reshape(-1))
    assert res["ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-4)


def test_eviction_cache_that_keeps_everything_is_exact(tiny_model):
    import torch

    from measurement.kv_cache import make_kv_cache
    from measurement.quality.evaluate import ppl_decode

    torch.manual_seed(1)
    ids = torch.randint(0, tiny_model.config.vocab_size, (2 * 32,))
    full = ppl_decode(tiny_model, ids, lambda b: None, seq_len=32, prefix=20)
    big = ppl_decode(tiny_model, ids, lambda b: make_kv_cache("streamingllm", tiny_model.config, budget=64)[0],
                     seq_len=32, prefix=20)
    small = ppl_decode(tiny_model, ids, lambda b: make_kv_cache("streamingllm", tiny_model.config, budget=8)[0],
                       seq_len=32, prefix=20)
    assert big["ppl"] == pytest.approx(full["ppl"], rel=1e-5)
    assert small["ppl"] != pytest.approx(full["ppl"], rel=1e-6)


def _run(out: Path, *extra: str) -> int:
    from measurement.quality import campaign

    return campaign.main(["--eval", "--tiny", "--out", str(out), "--seq-len", "64", "--prefix", "48",
                          "--kv-budgets", "16", "--max-windows", "3", "--calib-windows", "4",
                          "--only", "drop-1,kv-int4,streamingllm,gptq-int4,rtn-int4-sim", "--git-commit", "test", *extra])


def test_campaign_train_eval_resume(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers", minversion="5.0")
    out = tmp_path / "q"
    assert _run(out, "--train", "--train-candidates", "0.1:5,0.2:3", "--train-batch", "2", "--eval-every", "2") == 0
    for f in ("kjv-llama-tiny.safetensors", "config.json", "train_log.json", "quality_rows.jsonl",
              "small_model_quality.csv", "small_model_quality.meta.json"):
        assert (out / f).exists(), f
    log = json.loads((out / "train_log.json").read_text())
    assert len(log["candidates"]) == 2 and log["chosen_candidate"] in (0, 1)
    assert log["steps"] == (5, 3)[log["chosen_candidate"]] and log["log"][0]["step"] == 0
    assert math.isfinite(log["val_ppl_bf16"]) and math.isfinite(log["test_ppl_bf16"])
    assert log["best_val_ppl"] == min(c["best_val_ppl"] for c in log["candidates"])
    rows = [json.loads(x) for x in (out / "quality_rows.jsonl").read_text().splitlines()]
    got = {(r["precision"], r["sparsity"], r["kv"], r["kv_budget"], r["metric"]): r for r in rows}
    want = {("bf16", "dense", "kv-fp16", None, "ppl"), ("bf16", "drop-1", "kv-fp16", None, "ppl"),
            ("bf16", "dense", "kv-fp16", None, "ppl_decode"), ("bf16", "dense", "kv-int4", None, "ppl_decode"),
            ("bf16", "dense", "kv-int4", None, "ppl_decode_res0"),
            ("bf16", "dense", "streamingllm", 16, "ppl_decode"), ("gptq-int4", "dense", "kv-fp16", None, "ppl"),
            ("rtn-int4-sim", "dense", "kv-fp16", None, "ppl")}
    assert want <= set(got), set(got)
    for k in want:
        r = got[k]
        assert r["status"] == "ok", r
        assert r["value"] > 1 and r["baseline"] > 1 and r["n_tokens"] > 0
        assert r["delta_rel"] == pytest.approx(r["value"] / r["baseline"] - 1)
        assert r["weights"] == "trained here: measurement/data/quality/kjv-llama-tiny.safetensors"
        assert r["git_commit"] == "test" and r["gpu"] == "cpu" and r["torch"]
    assert got[("bf16", "dense", "kv-fp16", None, "ppl")]["delta_rel"] == 0
    assert got[("bf16", "dense", "kv-fp16", None, "ppl")]["n_tokens"] == 3 * 63
    assert got[("bf16", "dense", "kv-fp16", None, "ppl_decode")]["n_tokens"] == 3 * 16
    assert got[("bf16", "drop-1", "kv-fp16", None, "ppl")]["delta_rel"] != 0
    assert "ShortGPT" in got[("bf16", "drop-1", "kv-fp16", None, "ppl")]["notes"]
    assert "simulated" in got[("gptq-int4", "dense", "kv-fp16", None, "ppl")]["notes"]
    d1 = got[("bf16", "drop-1", "kv-fp16", None, "ppl")]
    assert d1["delta_ci95_lo"] <= d1["delta_rel"] <= d1["delta_ci95_hi"]
    assert len(d1["window_nll"]) == 3
    # awq-int4 / nf4 rows from the combos are rows too (unsupported on CPU), never crashes
    with open(out / "small_model_quality.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == len(rows)
    from measurement.quality.rows import COLUMNS

    assert list(csv_rows[0].keys()) == COLUMNS
    meta = json.loads((out / "small_model_quality.meta.json").read_text())
    assert "ppl_decode" in meta["protocols"] and meta["n_rows"] == len(rows)

    # resume: nothing new
    n_lines = len((out / "quality_rows.jsonl").read_text().splitlines())
    assert _run(out) == 0
    assert len((out / "quality_rows.jsonl").read_text().splitlines()) == n_lines
    # a lost row (and a line cut by a kill) is redone, the rest kept
    lines = (out / "quality_rows.jsonl").read_text().splitlines()
    dropped = json.loads(lines[-1])
    (out / "quality_rows.jsonl").write_text("\n".join(lines[:-1]) + "\n" + '{"cut": ')
    capsys.readouterr()
    assert _run(out) == 0
    after = [json.loads(x) for x in (out / "quality_rows.jsonl").read_text().splitlines() if x.endswith("}")]
    assert len(after) == n_lines
    assert (after[-1]["precision"], after[-1]["kv"], after[-1]["metric"]) == (
        dropped["precision"], dropped["kv"], dropped["metric"])
    assert "1 new rows" in capsys.readouterr().out


def test_deadline_stops_new_work(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "q"
    assert _run(out, "--train", "--train-candidates", "0.1:2", "--train-batch", "2", "--eval-every", "1",
                "--deadline-s", "0") == 0
    assert (out / "kjv-llama-tiny.safetensors").exists()
    text = (out / "quality_rows.jsonl").read_text() if (out / "quality_rows.jsonl").exists() else ""
    assert text.strip() == ""


def test_gptq_beats_rtn_on_its_calibration_data():
    torch = pytest.importorskip("torch")
    from measurement.awq import fake_quant_int4_g128
    from measurement.quality.gptq import gptq_quantize_weight

    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 256, generator=g)
    # correlated input channels (as in real activations): GPTQ's error feedback has room to work
    X = torch.randn(2048, 48, generator=g) @ torch.randn(48, 256, generator=g) + 0.3 * torch.randn(2048, 256, generator=g)
    H = 2 * X.t() @ X / X.shape[0]
    Q = gptq_quantize_weight(W, H)
    R = fake_quant_int4_g128(W)
    err = lambda A: float(((X @ (W - A).t()) ** 2).mean())  # noqa: E731
    assert err(Q) < 0.5 * err(R), (err(Q), err(R))
    # every group of 128 columns of a row holds at most 16 distinct values (an int4 grid)
    for j in range(0, 256, 128):
        assert max(len(torch.unique(Q[r, j:j + 128])) for r in range(64)) <= 16


def test_gptq_on_tiny_model(tiny_model):
    import copy

    import torch

    from measurement.quality.gptq import apply_gptq_int4
    from measurement.quality.evaluate import ppl

    m = copy.deepcopy(tiny_model)
    ids = torch.randint(0, m.config.vocab_size, (4 * 32,))
    before = ppl(m, ids, seq_len=32)["ppl"]
    apply_gptq_int4(m, [ids[:64].view(2, 32)])
    after = ppl(m, ids, seq_len=32)["ppl"]
    assert math.isfinite(after) and after != before
    assert "GPTQ" in m._advisor_notes[-1]


def test_kept_dataset_and_model_are_consistent():
    """The committed rows, sidecar and weights: schema, provenance, and the model reproduces its baseline."""
    from measurement.quality import model as M
    from measurement.quality.rows import COLUMNS, CSV_NAME, META_NAME, ROWS_NAME

    d = M.DATA_DIR
    assert M.WEIGHTS_PATH.stat().st_size <= 16 * 2**20  # comes back from $OUT; travels with device calls
    with open(d / CSV_NAME) as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0].keys()) == COLUMNS
    assert {r["status"] for r in rows} <= {"ok", "unsupported", "error"}
    for r in rows:
        assert r["model"] == M.MODEL_ID and r["weights"] == f"trained here: measurement/data/quality/{M.WEIGHTS_NAME}"
        assert r["gpu"] and r["torch"] and r["git_commit"] and r["date_utc"]
        if r["status"] == "ok":
            v, b = float(r["value"]), float(r["baseline"])
            assert float(r["delta_rel"]) == pytest.approx(v / b - 1, abs=1e-9)
            assert int(r["n_tokens"]) > 10_000 and int(r["seq_len"]) == 512 and int(r["stride"]) == 512
    meta = json.loads((d / META_NAME).read_text())
    assert meta["model"] == M.MODEL_ID and "ppl_decode" in meta["protocols"]
    assert meta["training"]["params"] == 7_344_384
    pytest.importorskip("torch")
    pytest.importorskip("transformers", minversion="5.0")
    import torch

    from measurement.quality import corpus as C
    from measurement.quality.evaluate import ppl

    base = next(json.loads(x) for x in (d / ROWS_NAME).read_text().splitlines()
                if '"precision": "bf16", "sparsity": "dense", "kv": "kv-fp16"' in x and '"metric": "ppl"' in x)
    m = M.load_model(dtype=torch.float32)
    assert M.n_params(m) == 7_344_384
    ids = torch.tensor(C.token_splits()["test"])
    got = ppl(m, ids, 512, max_windows=2)
    want = math.exp(sum(base["window_nll"][:2]) / (2 * 511))  # measured in bf16 on the GPU
    assert got["ppl"] == pytest.approx(want, rel=5e-3)
