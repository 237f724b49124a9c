"""measurement.runner's orchestration without a GPU: model building (prepare_model) and the measurement
(Scenario) are faked, so what is checked is the runner's own work: one build per group, static and
backend refusals as 'unsupported' rows, how OOM, Unsupported and other failures become row statuses,
no compiled retries after a compile failure, the deadline, resumption and the current.json marker."""
from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace as NS

import pytest

from measurement import runner as RN
from measurement.method_base import Unsupported
from measurement.prepare import ModelContext
from measurement.store import RunConfig

CFG = NS(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, head_dim=None,
         vocab_size=256)


@pytest.fixture(autouse=True)
def setup(monkeypatch, fixed_commit):
    try:
        import torch  # noqa: F401
    except ImportError:  # the runner only needs torch.device and the OOM type off the GPU path
        t = types.ModuleType("torch")
        t.device = lambda d: NS(type=str(d))
        t.cuda = NS(is_available=lambda: False)
        t.OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {})
        monkeypatch.setitem(sys.modules, "torch", t)
    yield


class World:
    """Fakes of prepare_model, fuse_model and Scenario, with a record of what ran."""

    def __init__(self, monkeypatch, out):
        self.out = out
        self.built, self.fused, self.measured, self.marks, self.released = [], [], [], [], []
        self.fail_build, self.fail_run = {}, {}
        w = self

        def prepare_model(rc, device, catalog=None, config=None):
            w.built.append(rc.group)
            w.marks.append(json.loads((w.out / "current.json").read_text())["batch"])
            if rc.precision in w.fail_build:
                raise w.fail_build[rc.precision]
            return ModelContext(model=object(), config=CFG, weights_source="random", weights_bytes=2e9,
                                step_weight_bytes=1.5e9, matmul_params=1e6, device=device, notes=["n1"], apply_s=1.234)

        class Scenario:
            def __init__(self, rc):
                self.rc = rc

            def run(self, ctx, backend):
                w.measured.append((self.rc.backend, self.rc.batch, backend.name))
                err = w.fail_run.get((self.rc.backend, self.rc.batch))
                if err:
                    raise err
                return {"decode_ms_per_token": 2.0, "prefill_ms": 10.0, "n_trials": 3, "decode_spread_pct": 5.0}

        import gc

        monkeypatch.setattr(gc, "collect", lambda *a: 0)  # seconds in a test process's large heap; no GPU here
        monkeypatch.setattr(RN, "_release", lambda device: w.released.append(len(w.measured)))
        monkeypatch.setattr(RN, "prepare_model", prepare_model)
        monkeypatch.setattr(RN, "fuse_model", lambda ctx: w.fused.append(ctx))
        monkeypatch.setattr(RN, "Scenario", Scenario)


def _rows_by(rows):
    return {(r["precision"], r["backend"], r["batch"], r["kv"]): r for r in rows}


def test_groups_statuses_and_resume(tmp_path, monkeypatch):
    w = World(monkeypatch, tmp_path)
    w.fail_build = {"bnb-int8": Unsupported("bitsandbytes needs CUDA"),
                    "bnb-nf4": RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"),
                    "int8-wo": ValueError("bad\nweights")}
    w.fail_run = {("eager", 64): RuntimeError("CUDA out of memory"), ("eager", 32): ValueError("nan logits"),
                  ("eager", 16): Unsupported("no kernel")}
    m = "llama3.2-1b"
    cs = ([RunConfig(model=m, backend="eager", batch=b) for b in (1, 16, 32, 64)]
          + [RunConfig(model=m, batch=1), RunConfig(model=m, kv="kv-int8", batch=2),  # compiled
             RunConfig(model=m, precision="fp8", sparsity="2:4-magnitude"),  # static refusal
             RunConfig(model=m, kv="snapkv", backend="eager")]  # needs a budget
          + [RunConfig(model=m, precision=p, backend="eager") for p in ("bnb-int8", "bnb-nf4", "int8-wo")])
    seen = []
    rows = RN.Runner(tmp_path, device="cpu", on_row=seen.append).run(cs)
    assert len(rows) == len(cs) == len(seen) == len(RN.RowStore(tmp_path).rows())
    by = _rows_by(rows)
    ok = by[("bf16", "eager", 1, "kv-fp16")]
    assert ok["status"] == "ok" and ok["reason"] is None and ok["weights_gb"] == 2.0 and ok["method_notes"] == "n1"
    assert ok["num_layers"] == 2 and ok["apply_s"] == 1.23 and ok["flags"] == "decode_spread_gt_3pct"
    assert ok["roofline_decode_ms"] is None  # no measured peaks on a CPU device
    assert by[("bf16", "eager", 64, "kv-fp16")]["status"] == "does_not_fit"
    assert by[("bf16", "eager", 64, "kv-fp16")]["reason"].startswith("OOM: RuntimeError: CUDA out of memory")
    assert (by[("bf16", "eager", 32, "kv-fp16")]["status"], by[("bf16", "eager", 32, "kv-fp16")]["reason"]) == \
        ("error", "ValueError: nan logits")
    assert by[("bf16", "eager", 16, "kv-fp16")]["reason"] == "no kernel"
    assert by[("bf16", "compiled", 2, "kv-int8")]["status"] == "unsupported"  # the compiled backend's own check
    assert "composes with fp16/bf16 only" in by[("fp8", "compiled", 1, "kv-fp16")]["reason"]
    assert by[("bf16", "eager", 1, "snapkv")]["reason"] == "snapkv needs kv_budget"
    # a failed build is every config's outcome in that group
    assert (by[("bnb-int8", "eager", 1, "kv-fp16")]["status"], by[("bnb-int8", "eager", 1, "kv-fp16")]["reason"]) == \
        ("unsupported", "bitsandbytes needs CUDA")
    assert by[("bnb-nf4", "eager", 1, "kv-fp16")]["status"] == "does_not_fit"
    assert by[("int8-wo", "eager", 1, "kv-fp16")]["reason"] == "ValueError: bad weights"
    # one build per (model, precision, sparsity, weights) group; the fused compiled mode merges weights once
    assert len(w.built) == len(set(w.built)) == 4 and len(w.fused) == 1
    # compiled graphs and cached memory are released after each failed config and when the built group is done
    assert len(w.released) == 3 + 1 and w.released[-1] == len(w.measured)  # eager 16, 32, 64 failed; one group
    # compiled batch 1 prompt 512 runs first in its group (the fully specialized shape)
    assert w.measured[0] == ("compiled", 1, "compiled") and not (tmp_path / "current.json").exists()
    # resumed: only the error rows are tried again
    w.measured.clear()
    again = RN.Runner(tmp_path, device="cpu").run(cs)
    assert {(r["precision"], r["batch"]) for r in again} == {("bf16", 32), ("int8-wo", 1)}


def test_no_compiled_retries_after_a_compile_failure(tmp_path, monkeypatch):
    w = World(monkeypatch, tmp_path)
    w.fail_run = {("compiled", 8): RuntimeError("inductor: triton error")}
    cs = [RunConfig(model="llama3.2-1b", batch=b, prompt_len=256) for b in (1, 4, 8, 16)]
    rows = RN.Runner(tmp_path, device="cpu").run(cs)
    st = {r["batch"]: (r["status"], r["reason"]) for r in rows}
    # batch 1 is ordered last (not the reference shape); after the failure at batch 8 only larger batches run
    assert [b for _, b, _ in w.measured] == [4, 8, 16]
    assert st[8] == ("unsupported", "compiled backend failed: RuntimeError: inductor: triton error")
    assert st[16][0] == st[4][0] == "ok"
    assert st[1][0] == "unsupported" and st[1][1].startswith("not tried after the first compiled failure of this "
                                                             "model/method: compiled backend failed")
    # after two compile failures nothing compiled is tried in the group any more
    w.fail_run = {("compiled", b): RuntimeError("boom") for b in (2, 3)}
    w.measured.clear()
    w.out = tmp_path / "b"
    rows = RN.Runner(tmp_path / "b", device="cpu").run(
        [RunConfig(model="llama3.2-1b", batch=b, prompt_len=300) for b in (2, 3, 5, 64)])
    assert [b for _, b, _ in w.measured] == [2, 3]
    assert [r["reason"][:9] for r in rows] == ["compiled ", "compiled ", "not tried", "not tried"]
    assert w.marks == [4, 2]  # current.json names the config being built, for a crash row


def test_deadline_stops_new_groups_and_configs(tmp_path, monkeypatch):
    w = World(monkeypatch, tmp_path)
    cs = [RunConfig(model="llama3.2-1b", backend="eager", batch=b) for b in (1, 2)]
    cs.append(RunConfig(model="llama3.2-1b", precision="fp8", sparsity="2:4-wanda", backend="eager"))
    rows = RN.Runner(tmp_path, device="cpu", deadline=1.0).run(cs)  # long past
    assert [r["status"] for r in rows] == ["unsupported"] and w.built == []  # static refusals still written
    clock = iter([0.0, 0.0, 10.0, 10.0])
    monkeypatch.setattr(RN, "time", NS(time=lambda: next(clock), perf_counter=lambda: 0.0, strftime=RN.time.strftime,
                                       gmtime=RN.time.gmtime))
    w.out = tmp_path / "b"
    rows = RN.Runner(tmp_path / "b", device="cpu", deadline=5.0).run(cs[:2])
    assert len(rows) == 1 and len(w.measured) == 1  # the group was started; its second config was not


def test_helpers():
    assert RN._f(1.23456) == "1.235" and RN._f(None) == "None"
    assert RN._reason(ValueError("a\nb" + "x" * 500)).startswith("ValueError: a b") and len(RN._reason(ValueError("y" * 500))) == 400
    assert RN.static_check(RunConfig(model="m", precision="w8a8", batch=8)).startswith("w8a8 compiled")
    assert RN.static_check(RunConfig(model="m", precision="w8a8", batch=32)) is None
    assert RN.static_check(RunConfig(model="m", precision="w8a8", batch=8, backend="eager")) is None
    row = RN.base_row(RunConfig(model="m", backend="eager", batch=2), {"gpu": "h200", "torch": "2.9"})
    assert row["gpu"] == "h200" and row["compile_mode"] is None and row["torch"] == "2.9"
    assert row["key"] == RunConfig(model="m", backend="eager", batch=2).key("h200")
    assert json.loads(row["config_json"])["batch"] == 2
