"""measurement.quality.methods: the glue from a campaign row's method spec to measurement.apply, with the
apply functions faked (which are called, in which order, with which arguments, and the notes), the KV cache
factory and the classification of errors."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from measurement.method_base import Unsupported
from measurement.quality import methods as QM


class Model:
    def __init__(self):
        self._advisor_notes = []
        self.config = types.SimpleNamespace(name="cfg")
        self.log = []


@pytest.fixture
def fakes(monkeypatch):
    def sparsity(model, s, calib_batches=None, **kw):
        model.log.append(("sparsity", s, len(calib_batches), kw))
        model._advisor_notes.append(f"sparsity {s}")
        return model

    def precision(model, p, calib_batches=None, **kw):
        model.log.append(("precision", p, None if calib_batches is None else len(calib_batches), kw))
        if p == "gptq-int4":
            raise Unsupported("gptq-int4 needs a CUDA GPU for its kernels")
        return model

    monkeypatch.setattr(QM, "apply_sparsity", sparsity)
    monkeypatch.setattr(QM, "apply_precision", precision)


def _spec(p="bf16", s="dense", kv="kv-fp16", b=None, metric="ppl"):
    return {"precision": p, "sparsity": s, "kv": kv, "kv_budget": b, "metric": metric}


CALIB = np.zeros((10, 8), dtype=np.int64)  # 10 windows -> batches of 4, 4, 2


def test_calib_list():
    assert [b.shape for b in QM.calib_list(CALIB)] == [(4, 8), (4, 8), (2, 8)]
    assert QM.calib_list(None) == [] and len(QM.calib_list(CALIB, per_batch=5)) == 2


def test_baseline_applies_nothing(fakes):
    m, notes = QM.apply_methods(Model(), _spec(), CALIB)
    assert m.log == [] and notes == []


def test_sparsity_then_precision_with_a_dense_mask(fakes):
    m, notes = QM.apply_methods(Model(), _spec("int8-wo", "2:4-wanda"), CALIB)
    assert m.log == [("sparsity", "2:4-wanda", 3, {"semi_structured": False}), ("precision", "int8-wo", 3, {})]
    assert notes == ["2:4 mask kept in dense storage so the quantizer can read it", "sparsity 2:4-wanda"]
    m, _ = QM.apply_methods(Model(), _spec("bf16", "2:4-magnitude"), CALIB)
    assert m.log == [("sparsity", "2:4-magnitude", 3, {})]  # no quantizer: semi-structured kernels


@pytest.mark.parametrize("p,real,calib,kw,note", [
    ("rtn-int4", "awq-int4", None, {}, "rtn-int4: apply_precision('awq-int4', no calibration: round-to-nearest)"),
    ("rtn-int4-sim", "awq-int4", None, {"simulate": True}, "rtn-int4-sim: apply_precision('awq-int4', no "
                                                            "calibration: round-to-nearest, simulate=True)"),
    ("awq-int4-sim", "awq-int4", 3, {"simulate": True}, "awq-int4-sim: apply_precision('awq-int4', calibration, "
                                                         "simulate=True)"),
    ("fp8", "fp8", 3, {}, None)])
def test_precision_aliases(fakes, p, real, calib, kw, note):
    m, notes = QM.apply_methods(Model(), _spec(p), CALIB)
    assert m.log == [("precision", real, calib, kw)]
    assert notes == ([note] if note else [])


def test_gptq_falls_back_to_the_campaigns_own(fakes, monkeypatch):
    gptq = types.ModuleType("measurement.quality.gptq")
    gptq.apply_gptq_int4 = lambda model, batches: model.log.append(("gptq", len(batches))) or model
    monkeypatch.setitem(sys.modules, "measurement.quality.gptq", gptq)
    m, notes = QM.apply_methods(Model(), _spec("gptq-int4"), CALIB)
    assert m.log[-1] == ("gptq", 3) and notes == ["apply.py: gptq-int4 needs a CUDA GPU for its kernels"]


def test_cache_factory_detaches_the_previous_cache(monkeypatch):
    made = []

    class Cache:
        def __init__(self):
            self.detached = False

        def detach(self):
            self.detached = True

    def make(kv, config, budget=None, model=None, **kw):
        c = Cache()
        made.append((kv, budget, model is not None, kw, c))
        return c, f"{kv} budget {budget}; no model attached: uniform scores"

    monkeypatch.setattr(QM, "make_kv_cache", make)
    model = Model()
    factory, notes = QM.cache_factory(_spec(kv="snapkv", b=128, metric="ppl_decode"), model)
    assert notes == ["snapkv budget 128; real post-rope queries of the last prompt window (hooks)"]
    a, b = factory(1), factory(2)
    assert a.detached and not b.detached and [m[2] for m in made] == [False, True, True]
    _, notes = QM.cache_factory(_spec(kv="kv-int4", metric="ppl_decode_res0"), model)
    assert notes[0].endswith("; residual 0") and made[-1][3] == {"residual": 0}


def test_classify_error(monkeypatch):
    assert QM.classify_error(Unsupported("needs sm90")) == ("unsupported", "needs sm90")
    st, msg = QM.classify_error(ValueError("bad\nshape"))
    assert st == "error" and msg == "ValueError: bad shape"
    # torch.cuda.OutOfMemoryError is recognised by its name, with or without torch installed
    OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {})
    monkeypatch.setitem(sys.modules, "torch", None)  # no torch to import
    assert QM.classify_error(OutOfMemoryError("tried to allocate 2 GiB")) == (
        "error", "does not fit (out of memory): OutOfMemoryError: tried to allocate 2 GiB")
    assert QM.classify_error(RuntimeError("CUDA out of memory"))[1].startswith("does not fit")
    assert not QM.classify_error(RuntimeError("device-side assert"))[1].startswith("does not fit")
