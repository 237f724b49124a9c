"""measurement.method_base's helpers with a fake torch (they only need nn.Linear, dtypes, no_grad and cat):
notes, the decoder walk, device / dtype / compute capability, module replacement, calibration batches,
the optional imports, the torchao filter and the capture of calibration inputs per module."""
from __future__ import annotations

import sys
import types
from contextlib import nullcontext
from types import SimpleNamespace as NS

import numpy as np
import pytest

from measurement import method_base as MB
from measurement.method_base import Unsupported


class Linear:
    def __init__(self, i, o):
        self.in_features, self.out_features = i, o
        self.hooks = []

    def register_forward_pre_hook(self, fn):
        self.hooks.append(fn)
        return NS(remove=lambda: self.hooks.remove(fn))


class Block:
    def __init__(self):
        self.q_proj, self.down_proj, self.norm = Linear(8, 8), Linear(16, 8), NS(weight=None)

    def named_modules(self):
        yield "", self
        yield "self_attn.q_proj", self.q_proj
        yield "mlp.down_proj", self.down_proj
        yield "input_layernorm", self.norm


class X(np.ndarray):
    def detach(self):
        return self

    def to(self, device):
        return self


class Model:
    """Two blocks; a forward feeds (batch, seq, 8) activations to every q_proj hook."""

    def __init__(self):
        self.model = NS(layers=[Block(), Block()])
        self.lm_head = Linear(8, 100)
        self.params = [NS(device="cuda:0", dtype="int8", is_floating_point=lambda: False),
                       NS(device="cuda:0", dtype="bfloat16", is_floating_point=lambda: True)]
        self.seen = []

    def parameters(self):
        return iter(self.params)

    def __call__(self, input_ids, use_cache=True):
        self.seen.append((input_ids.shape, use_cache))
        x = np.arange(input_ids.size * 8, dtype=float).reshape(*input_ids.shape, 8).view(X)
        for b in self.model.layers:
            for h in list(b.q_proj.hooks):
                h(b.q_proj, (x,))


@pytest.fixture
def torch(monkeypatch):
    t = types.ModuleType("torch")
    t.float32 = "float32"
    t.nn = NS(Linear=Linear)
    t.no_grad = nullcontext
    t.cat = lambda xs: np.concatenate(xs)
    t.cuda = NS(get_device_capability=lambda dev: (9, 0))
    monkeypatch.setitem(sys.modules, "torch", t)
    return t


def test_notes_left_on_a_model():
    m = NS()
    assert MB.notes_of(m) == []
    MB._note(m, "AWQ scales: none (no calibration)")
    MB._note(m, "2:4 mask")
    notes = MB.notes_of(m)
    notes.append("not kept")
    assert MB.notes_of(m) == ["AWQ scales: none (no calibration)", "2:4 mask"]


def test_decoder_walk_device_dtype(torch):
    m = Model()
    assert MB.decoder_layers(m) is m.model.layers
    assert MB.decoder_layers(NS(layers=["a"])) == ["a"]  # a bare decoder: its own layers
    with pytest.raises(Unsupported, match="cannot find decoder layers in SimpleNamespace"):
        MB.decoder_layers(NS())
    assert [(n, mod.in_features) for n, mod in MB.decoder_linears(m)] == [
        ("layers.0.self_attn.q_proj", 8), ("layers.0.mlp.down_proj", 16),
        ("layers.1.self_attn.q_proj", 8), ("layers.1.mlp.down_proj", 16)]  # not the lm_head
    assert MB._device_of(m) == "cuda:0" and MB._dtype_of(m) == "bfloat16"  # the first floating parameter
    m.params = m.params[:1]
    assert MB._dtype_of(m) == "float32"
    assert MB._cuda_cc(NS(type="cpu")) is None and MB._cuda_cc(NS(type="cuda")) == (9, 0)
    keep = MB._filter_decoder_linear(m)
    assert keep(m.model.layers[1].down_proj) and not keep(m.lm_head) and not keep(m.model.layers[0].norm)


def test_set_module_and_batches():
    root = NS(model=NS(layers=[NS(mlp=NS(up="old")), NS(mlp=NS(up="old"))]))
    MB._set_module(root, "model.layers.1.mlp.up", "new")
    assert [L.mlp.up for L in root.model.layers] == ["old", "new"]
    assert MB._batches(None) == [] and MB._batches([{"input_ids": "a"}, "b"]) == ["a", "b"]


def test_optional_imports(monkeypatch):
    with pytest.raises(Unsupported, match="need a CUDA device here \\(model is on cpu\\)"):
        MB._need_bnb(NS(type="cpu"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(Unsupported, match="bitsandbytes is not importable here: ModuleNotFoundError"):
        MB._need_bnb(NS(type="cuda"))
    bnb = types.ModuleType("bitsandbytes")
    monkeypatch.setitem(sys.modules, "bitsandbytes", bnb)
    assert MB._need_bnb(NS(type="cuda")) is bnb
    ao, q = types.ModuleType("torchao"), types.ModuleType("torchao.quantization")
    q.quantize_ = lambda *a: None
    ao.quantization = q
    monkeypatch.setitem(sys.modules, "torchao", ao)
    monkeypatch.setitem(sys.modules, "torchao.quantization", q)
    assert MB._need_torchao() is ao


def test_capture_inputs_keeps_max_rows_and_removes_hooks(torch):
    m = Model()
    q0, q1 = m.model.layers[0].q_proj, m.model.layers[1].q_proj
    ids = [np.zeros((2, 3), dtype=int).view(X), {"input_ids": np.zeros((2, 3), dtype=int).view(X)},
           np.zeros((1, 3), dtype=int).view(X)]
    got = MB._capture_inputs(m, {"q0": q0, "q1": q1, "down": m.model.layers[0].down_proj}, ids, max_rows=10)
    assert m.seen == [((2, 3), False), ((2, 3), False), ((1, 3), False)]
    # 6 rows (2 x 3 tokens) from the first batch, the first 4 of the second, none of the third; nothing
    # reached down_proj
    assert got["q0"].shape == (10, 8) and got["down"] is None
    assert got["q0"][6:].tolist() == got["q0"][:4].tolist() and np.array_equal(got["q0"], got["q1"])
    assert q0.hooks == [] and q1.hooks == []

    def boom(**kw):
        raise RuntimeError("forward failed")

    m2 = Model()
    m2.__class__ = type("Broken", (Model,), {"__call__": lambda self, **kw: boom()})
    with pytest.raises(RuntimeError, match="forward failed"):
        MB._capture_inputs(m2, {"q": m2.model.layers[0].q_proj}, ids, max_rows=4)
    assert m2.model.layers[0].q_proj.hooks == []  # removed on the way out
