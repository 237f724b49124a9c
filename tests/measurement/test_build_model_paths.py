"""measurement.build with torch and transformers faked: the random initialization (norms to one, biases to
zero, matrices drawn from the seeded generator, buffers zeroed, rotary modules rebuilt), the profile's
config, and build_model's three kinds of weights (random, a local safetensors directory, a hub id) with
the refusals of a directory without config or without safetensors."""
from __future__ import annotations

import sys
import types
from contextlib import nullcontext
from types import SimpleNamespace as NS

import pytest

from measurement import build as BD
from profiles import load


class Tensor:
    def __init__(self, ndim=2, floating=True):
        self.ndim, self.floating, self.ops = ndim, floating, []

    def fill_(self, v):
        self.ops.append(("fill", v))

    def zero_(self):
        self.ops.append(("zero",))

    def normal_(self, mean, std, generator=None):
        self.ops.append(("normal", mean, std, generator.seed))

    def is_floating_point(self):
        return self.floating


class Rotary:
    def __init__(self, config):
        self.config, self.inv_freq, self.device = config, Tensor(1), None

    def to(self, device):
        self.device = device
        return self


class Model:
    def __init__(self, config, **kw):
        self.config, self.kw, self.calls = config, kw, []
        self.params = {"model.layers.0.input_layernorm.weight": Tensor(1),
                       "model.layers.0.self_attn.q_proj.weight": Tensor(2),
                       "model.layers.0.self_attn.q_proj.bias": Tensor(1), "lm_head.weight": Tensor(2)}
        self.buffers = {"model.rotary_emb.inv_freq": Tensor(1), "model.scale": Tensor(1),
                        "model.position_ids": Tensor(1, floating=False)}
        self.model = NS(rotary_emb=Rotary(config))
        self.old_rotary = self.model.rotary_emb

    def named_parameters(self):
        return list(self.params.items())

    def named_buffers(self):
        return list(self.buffers.items())

    def named_modules(self):
        return [("", self), ("model", self.model), ("model.rotary_emb", self.model.rotary_emb)]

    def to_empty(self, device):
        self.calls.append(("to_empty", device))

    def to(self, device):
        self.calls.append(("to", device))
        return self

    def eval(self):
        self.calls.append(("eval",))
        return self

    def requires_grad_(self, flag):
        self.calls.append(("requires_grad", flag))
        return self


@pytest.fixture
def fk(monkeypatch):
    log = NS(devices=[], loads=[])
    torch = types.ModuleType("torch")
    torch.bfloat16, torch.float16 = "bfloat16", "float16"
    torch.Tensor = Tensor
    torch.no_grad = nullcontext

    def device(kind):
        log.devices.append(kind)
        return nullcontext()

    class Generator:
        def __init__(self, device=None):
            self.device, self.seed = device, None

        def manual_seed(self, s):
            self.seed = s

    torch.device, torch.Generator = device, Generator
    tf = types.ModuleType("transformers")

    class AutoConfig:
        @staticmethod
        def for_model(model_type, **kw):
            return NS(model_type=model_type, **kw)

        @staticmethod
        def from_pretrained(path):
            log.loads.append(("config", path))
            return NS(model_type="llama")

    class AutoModelForCausalLM:
        @staticmethod
        def from_config(config, dtype=None):
            return Model(config, dtype=dtype)

        @staticmethod
        def from_pretrained(path, **kw):
            log.loads.append(("model", path, kw))
            return Model(NS(name=path), **kw)

    tf.AutoConfig, tf.AutoModelForCausalLM = AutoConfig, AutoModelForCausalLM
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "transformers", tf)
    return log


def test_random_init(fk):
    cfg = NS(name="cfg")
    m = BD.build_random(cfg, device="cpu", seed=7, std=0.1)
    assert fk.devices == ["meta"] and m.kw == {"dtype": "bfloat16"}  # made on the meta device, bf16 by default
    ops = {k: t.ops for k, t in m.params.items()}
    assert ops == {"model.layers.0.input_layernorm.weight": [("fill", 1.0)],
                   "model.layers.0.self_attn.q_proj.weight": [("normal", 0.0, 0.1, 7)],
                   "model.layers.0.self_attn.q_proj.bias": [("zero",)], "lm_head.weight": [("normal", 0.0, 0.1, 7)]}
    assert [(k, t.ops) for k, t in m.buffers.items()] == [
        ("model.rotary_emb.inv_freq", []), ("model.scale", [("zero",)]), ("model.position_ids", [])]
    # the rotary module is rebuilt from its config (to_empty left inv_freq uninitialized)
    assert m.model.rotary_emb is not m.old_rotary and m.model.rotary_emb.config is cfg
    assert m.model.rotary_emb.device == "cpu"
    assert m.calls == [("to_empty", "cpu"), ("eval",), ("requires_grad", False)]


def test_profile_config_and_random_build(fk):
    llm = load().llm("llama3.1-8b")
    cfg = BD.profile_config("llama3.1-8b")
    assert cfg.model_type == llm.model_type and cfg._attn_implementation == "sdpa"
    assert all(getattr(cfg, k) == v for k, v in llm.hf_config_dict().items())
    model, got, src = BD.build_model("llama3.1-8b", device="cpu", dtype="float16")
    assert src == "random" and got.hidden_size == llm.hidden_size and model.kw == {"dtype": "float16"}
    mine = NS(name="given")
    assert BD.build_model("ignored", config=mine, device="cpu")[1:] == (mine, "random")


def test_local_and_hub_weights(fk, tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    with pytest.raises(BD.WeightsError, match="no config.json"):
        BD.build_model("m", weights=str(d))
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(BD.WeightsError, match="pickled checkpoints are never loaded"):
        BD.build_model("m", weights=str(d))
    assert fk.loads == []
    (d / "model.safetensors").write_bytes(b"st")
    model, cfg, src = BD.build_model("m", weights=str(d), device="cpu")
    assert src == f"path:{d.resolve()}" and cfg is model.config
    assert fk.loads == [("config", str(d)), ("model", str(d), {"dtype": "bfloat16", "use_safetensors": True,
                                                              "attn_implementation": "sdpa"})]
    assert model.calls == [("to", "cpu"), ("eval",), ("requires_grad", False)]
    model, cfg, src = BD.build_model("m", weights="org/model-7b", device="cuda", dtype="float16")
    assert src == "hf:org/model-7b" and fk.loads[-1] == ("model", "org/model-7b", {
        "dtype": "float16", "use_safetensors": True, "attn_implementation": "sdpa"})
    assert model.calls == [("to", "cuda"), ("eval",), ("requires_grad", False)]
