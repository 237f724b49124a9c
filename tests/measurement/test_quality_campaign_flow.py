"""measurement.quality.campaign's control flow without torch or a GPU: torch, the small model and the
evaluation are faked (numpy arrays stand in for tensors), the real plan, row file, CSV, sidecar and
method glue (measurement.quality.methods, with the apply functions faked) are used. What is checked: the
training candidates (budget skip, the best validation ppl kept and saved), one row per planned method with
its status (ok / unsupported / out of memory / error), baselines and deltas, the 2:4 dense-mask fallback,
the KV-cache notes, resume after a full run and after a line cut by a kill, the deadline, --only, and
the exits without weights or without --train/--eval."""
from __future__ import annotations

import csv
import json
import math
import sys
import types
from types import SimpleNamespace as NS

import numpy as np
import pytest

import measurement.quality as QP
import measurement.sparsity as SP
from measurement.method_base import Unsupported
from measurement.quality import campaign as C
from measurement.quality import corpus
from measurement.quality import methods as QM
from measurement.quality.plan import plan
from measurement.quality.rows import read_rows


class T(np.ndarray):
    """A numpy array with the few tensor methods the campaign calls."""

    def numel(self):
        return int(self.size)

    def to(self, *a, **k):
        return self

    def detach(self):
        return self


def _fake_torch():
    t = types.ModuleType("torch")
    t.long, t.float32, t.bfloat16 = "long", "float32", "bfloat16"
    t.cuda = NS(is_available=lambda: False, empty_cache=lambda: None)
    t.device = lambda s: NS(type=str(s))
    t.tensor = lambda v, dtype=None: np.asarray(v, dtype=np.int64).view(T)

    class Generator:
        def manual_seed(self, s):
            self.rng = np.random.default_rng(s)
            return self

    t.Generator = Generator
    t.randint = lambda lo, hi, shape, generator: generator.rng.integers(lo, hi, size=shape)
    t.stack = lambda xs: np.stack(xs).view(T)
    return t


class Net:
    """The small model: ``w`` marks which training candidate it is, ``factor`` scales its perplexity."""

    def __init__(self, w=0.0):
        self.w, self.factor, self.semi, self.dropped = w, 1.0, False, False
        self.config = NS(name="cfg")
        self._advisor_notes = []

    def state_dict(self):
        return {"w": np.array(self.w).view(T)}

    def load_state_dict(self, sd):
        self.w = float(sd["w"])

    def eval(self):
        return self

    def to(self, dtype):
        return self


# candidate dropout -> (best validation ppl, training seconds for its steps)
TRAIN = {0.1: (30.0, 1.0), 0.2: (25.0, 500.0), 0.3: (5.0, 1.0)}


def _fake_model_module(tmp_path, calls):
    M = types.ModuleType("measurement.quality.model")
    M.MODEL_ID, M.SMALL, M.TINY = "kjv-llama-7m", {"hidden_size": 256}, {"hidden_size": 64}
    M.DATA_DIR = tmp_path / "shipped"
    M.WEIGHTS_PATH, M.CONFIG_PATH = M.DATA_DIR / "kjv-llama-7m.safetensors", M.DATA_DIR / "config.json"
    M.make_config = lambda arch, tok=None: dict(arch, vocab=tok.get_vocab_size())
    M.build_model = lambda cfg, device="cpu", dtype=None: Net()
    M.n_params = lambda m: 1234

    class TrainSettings:
        def __init__(self, **kw):
            self.__dict__.update(kw)
            self.log = []

    M.TrainSettings = TrainSettings

    def train(model, tr, va, s, log_fn):
        ppl, wall = TRAIN[s.dropout]
        model.w = s.dropout
        s.log.append({"step": 0, "val_ppl": ppl})
        log_fn({"step": 0})
        calls.append(("train", s.dropout, s.max_steps, s.schedule))
        return model, {"steps": s.max_steps, "train_wall_s": wall, "best_val_ppl": ppl, "best_step": 7,
                       "settings": {"dropout": s.dropout}}

    M.train = train
    M.window_nll = lambda model, ids, seq_len, max_windows=0: (100 * math.log(20.0), 100)

    def save_model(model, path, config_path=None, metadata=None):
        path.write_bytes(b"weights")
        config_path.write_text("{}")
        calls.append(("save", model.w, metadata["model"]))

    M.save_model = save_model

    def write_train_log(path, summary, log, extra=None):
        path.write_text(json.dumps(dict(summary, log=log, **(extra or {}))))

    M.write_train_log = write_train_log

    def load_model(w, c, device=None, dtype=None):
        calls.append(("load", str(w), str(c)))
        return Net()

    M.load_model = load_model
    return M


def _fake_evaluate(calls):
    E = types.ModuleType("measurement.quality.evaluate")

    def _res(value, n_windows=4, tokens=63):
        return {"ppl": value, "n_tokens": n_windows * tokens, "window_nll": [math.log(value)] * n_windows,
                "tokens_per_window": tokens, "n_windows": n_windows}

    def ppl(model, ids, seq_len, batch_size=16, max_windows=0):
        if model.semi:
            raise NotImplementedError("no semi-structured kernel on this device")
        if model.dropped:
            raise ValueError("boom")
        return _res(10.0 * model.factor)

    def ppl_decode(model, ids, factory, seq_len=512, prefix=384, batch_size=1, max_windows=0):
        caches = [factory(2), factory(2)]  # one per batch of windows
        assert caches[0].detached and not caches[1].detached  # the factory detached the previous cache
        return _res(12.0 * model.factor * caches[1].factor, n_windows=3)

    def delta_ci(w, base, tpw):
        calls.append(("ci", len(w)))
        return (-0.01, 0.03)

    E.ppl, E.ppl_decode, E.delta_ci = ppl, ppl_decode, delta_ci
    return E


class Cache:
    def __init__(self, kv, residual):
        self.detached = False
        self.factor = {"kv-int2": 1.5, "kv-int4": 1.1}.get(kv, 1.0) * (1.2 if residual == 0 else 1.0)

    def detach(self):
        self.detached = True


@pytest.fixture
def camp(tmp_path, monkeypatch):
    """The fakes in place; returns (run(*argv), calls)."""
    calls = []
    M = _fake_model_module(tmp_path, calls)
    E = _fake_evaluate(calls)
    monkeypatch.setitem(sys.modules, "torch", _fake_torch())
    for name, mod in (("model", M), ("evaluate", E)):
        monkeypatch.setitem(sys.modules, f"measurement.quality.{name}", mod)
        monkeypatch.setattr(QP, name, mod, raising=False)
    monkeypatch.setattr(C, "provenance", lambda device, commit: {
        "gpu": device.type, "torch": "0.fake", "transformers": "0.fake", "bitsandbytes": None, "torchao": None,
        "git_commit": commit or "abc"})
    monkeypatch.setattr(corpus, "load_tokenizer", lambda: NS(get_vocab_size=lambda: 4096))
    monkeypatch.setattr(corpus, "token_splits", lambda tok: {"train": list(range(3000)),
                                                             "validation": list(range(500)),
                                                             "test": list(range(1000))})

    def sparsity(model, s, calib_batches=None, semi_structured=True):
        calls.append(("sparsity", s, len(calib_batches), semi_structured))
        model.factor *= 1.05
        model.semi = s.startswith("2:4") and semi_structured
        model.dropped = s == "drop-2"
        model._advisor_notes.append(f"{s} applied")
        return model

    def precision(model, p, calib_batches=None, **kw):
        if p == "fp8":
            raise Unsupported("fp8 needs compute capability 8.9")
        if p == "bnb-int8":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        model.factor *= 1.01
        return model

    def make_kv_cache(kv, config, budget=None, model=None, **kw):
        return Cache(kv, kw.get("residual")), f"{kv} budget {budget}; no model attached: synthetic queries"

    monkeypatch.setattr(QM, "apply_sparsity", sparsity)
    monkeypatch.setattr(SP, "apply_sparsity", sparsity)  # the campaign's own dense-mask retry
    monkeypatch.setattr(QM, "apply_precision", precision)
    monkeypatch.setattr(QM, "make_kv_cache", make_kv_cache)

    def run(*argv):
        return C.main(["--seq-len", "64", "--prefix", "48", "--kv-budgets", "64", "--calib-windows", "6",
                       "--deadline-s", "1e9", "--git-commit", "c0ffee", *argv])

    return run, calls


def _rows(out):
    return read_rows(out / "quality_rows.jsonl")


def _key(r):
    return r["precision"], r["sparsity"], r["kv"], r["kv_budget"], r["metric"]


def test_training_keeps_the_best_candidate_within_the_budget(camp, tmp_path, capsys):
    run, calls = camp
    out = tmp_path / "q"
    assert run("--train", "--tiny", "--out", str(out), "--train-candidates", "0.1:100,0.2,0.3:100",
               "--train-steps", "50") == 0
    # candidate 1 ran 50 steps in 500 s: the third (100 steps, ~1100 s) no longer fits the 200 s budget
    assert [c for c in calls if c[0] == "train"] == [("train", 0.1, 100, "cosine"), ("train", 0.2, 50, "cosine")]
    assert ("save", 0.2, "kjv-llama-tiny") in calls  # the lower validation ppl (25 < 30) is the one saved
    assert (out / "kjv-llama-tiny.safetensors").read_bytes() == b"weights"
    log = json.loads((out / "train_log.json").read_text())
    assert log["chosen_candidate"] == 1 and len(log["candidates"]) == 2 and log["best_val_ppl"] == 25.0
    assert log["val_ppl_bf16"] == pytest.approx(20.0) and log["test_tokens_scored"] == 100
    assert log["log"] == [{"step": 0, "val_ppl": 25.0}] and log["architecture"] == {"hidden_size": 64}
    assert "vocab 4096" in log["tokenizer"] and log["model"] == "kjv-llama-tiny"
    text = capsys.readouterr().out
    assert "candidate 2 (dropout 0.3, 100 steps) skipped" in text and "saved " in text
    assert not (out / "quality_rows.jsonl").exists()  # no --eval: nothing measured


def test_every_planned_method_becomes_a_row_then_a_rerun_resumes(camp, tmp_path, capsys):
    run, calls = camp
    out = tmp_path / "q"
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "kjv-llama-7m.safetensors").write_bytes(b"w")  # the kept weights
    assert run("--eval", "--out", str(out)) == 0
    rows = _rows(out)
    todo = plan([64])
    assert [_key(r) for r in rows] == [_key(t) for t in todo]  # every method, in plan order
    assert ("load", str(tmp_path / "shipped" / "kjv-llama-7m.safetensors"),
            str(tmp_path / "shipped" / "config.json")) in calls
    by = {_key(r): r for r in rows}
    base = by[("bf16", "dense", "kv-fp16", None, "ppl")]
    assert base["status"] == "ok" and base["value"] == 10.0 and base["delta_rel"] == 0.0
    assert base["weights"] == "trained here: measurement/data/quality/kjv-llama-7m.safetensors"
    assert base["git_commit"] == "c0ffee" and base["gpu"] == "cpu" and base["n_tokens"] == 4 * 63
    assert base["notes"].startswith("non-overlapping windows of 64, stride 64, 4 windows, 63 scored tokens")
    fp16 = by[("fp16", "dense", "kv-fp16", None, "ppl")]
    assert fp16["baseline"] == 10.0 and fp16["delta_rel"] == pytest.approx(0.01)
    assert (fp16["delta_ci95_lo"], fp16["delta_ci95_hi"]) == (-0.01, 0.03)
    fp8 = by[("fp8", "dense", "kv-fp16", None, "ppl")]
    assert (fp8["status"], fp8["reason"], fp8["value"], fp8["delta_rel"]) == (
        "unsupported", "fp8 needs compute capability 8.9", None, None)
    oom = by[("bnb-int8", "dense", "kv-fp16", None, "ppl")]
    assert oom["status"] == "error" and oom["reason"].startswith("does not fit (out of memory): RuntimeError")
    # bf16 2:4: the semi-structured forward fails, the same mask is measured in dense storage
    s24 = by[("bf16", "2:4-magnitude", "kv-fp16", None, "ppl")]
    assert s24["status"] == "ok" and s24["value"] == pytest.approx(10.5)
    assert "semi-structured kernel failed (NotImplementedError" in s24["notes"]
    assert "mask measured in dense storage" in s24["notes"]
    assert ("sparsity", "2:4-magnitude", 2, True) in calls and ("sparsity", "2:4-magnitude", 2, False) in calls
    # a failing forward of any other method is that method's error row
    d2 = by[("bf16", "drop-2", "kv-fp16", None, "ppl")]
    assert (d2["status"], d2["reason"]) == ("error", "ValueError: boom")
    # a quantizer after a 2:4 mask never sees the semi-structured layout
    combo = by[("bnb-nf4", "2:4-wanda", "kv-fp16", None, "ppl")]
    assert combo["status"] == "ok" and "2:4 mask kept in dense storage" in combo["notes"]
    # decode protocol rows: their own baseline, notes of the cache, residual-0 rows against ppl_decode's
    dbase = by[("bf16", "dense", "kv-fp16", None, "ppl_decode")]
    assert dbase["value"] == 12.0 and dbase["baseline"] == 12.0
    kv4 = by[("bf16", "dense", "kv-int4", None, "ppl_decode")]
    assert kv4["delta_rel"] == pytest.approx(0.1) and "prefill 48 tokens into the cache" in kv4["notes"]
    assert "real post-rope queries of the last prompt window (hooks)" in kv4["notes"]
    res0 = by[("bf16", "dense", "kv-int4", None, "ppl_decode_res0")]
    assert res0["baseline"] == 12.0 and res0["delta_rel"] == pytest.approx(1.1 * 1.2 - 1)
    assert "residual 0" in res0["notes"]
    snap = by[("bf16", "dense", "snapkv", 64, "ppl_decode")]
    assert "snapkv budget 64" in snap["notes"]
    # the CSV, its sidecar and the printed table
    table = list(csv.DictReader(open(out / "small_model_quality.csv")))
    assert len(table) == len(todo) and table[0]["delta_rel"] == "0.0" and float(table[1]["value"]) == fp16["value"]
    meta = json.loads((out / "small_model_quality.meta.json").read_text())
    n_unsup = sum(r["status"] == "unsupported" for r in rows)
    assert meta["n_rows"] == len(todo) and meta["status_counts"]["unsupported"] == n_unsup == 1
    assert meta["status_counts"]["error"] == 2 and meta["architecture"] == {"hidden_size": 256}
    assert f"{len(todo)} new rows" in capsys.readouterr().out

    # a rerun measures nothing again
    calls.clear()
    assert run("--eval", "--out", str(out)) == 0
    assert len(_rows(out)) == len(todo) and not [c for c in calls if c[0] == "load"]
    assert "0 new rows" in capsys.readouterr().out
    # a last line cut by a kill: only that method is measured again
    lines = (out / "quality_rows.jsonl").read_text().splitlines()
    (out / "quality_rows.jsonl").write_text("\n".join(lines[:-1] + [lines[-1][:40]]))
    assert run("--eval", "--out", str(out)) == 0
    again = _rows(out)
    assert len(again) == len(todo) and _key(again[-1]) == _key(todo[-1])
    assert "1 new rows" in capsys.readouterr().out


def test_only_filter_weights_option_and_deadline(camp, tmp_path, capsys):
    run, calls = camp
    w = tmp_path / "elsewhere" / "mine.safetensors"
    w.parent.mkdir()
    w.write_bytes(b"w")
    out = tmp_path / "only"
    assert run("--eval", "--out", str(out), "--weights", str(w), "--only", "fp8,snapkv") == 0
    keys = [_key(r) for r in _rows(out)]
    assert keys == [("bf16", "dense", "kv-fp16", None, "ppl"), ("fp8", "dense", "kv-fp16", None, "ppl"),
                    ("bf16", "dense", "kv-fp16", None, "ppl_decode"), ("bf16", "dense", "snapkv", 64, "ppl_decode"),
                    ("awq-int4", "dense", "snapkv", 128, "ppl_decode")]
    assert ("load", str(w), str(w.with_name("config.json"))) in calls

    late = tmp_path / "late"
    assert run("--eval", "--out", str(late), "--weights", str(w), "--deadline-s", "-1") == 0
    assert _rows(late) == [] and (late / "small_model_quality.csv").read_text().startswith("model,precision")
    assert f"deadline (-1s) reached: {len(plan([64]))} methods not started" in capsys.readouterr().out


def test_exits_without_weights_or_without_a_task(camp, tmp_path, capsys):
    run, _ = camp
    assert run("--eval", "--out", str(tmp_path / "none")) == 2  # no trained, kept or given weights
    assert "train first (--train)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        run("--out", str(tmp_path / "none"))
    assert e.value.code == 2 and "give --train and/or --eval" in capsys.readouterr().err
