"""measurement.prepare without torch: model building, the order and calibration of the methods, the notes,
the weight / streamed / matmul sizes of a ModelContext (CPU: parameter bytes; CUDA: allocator growth), the
projection fusion and the release between groups. torch, the model builder, the apply functions and the
fusion are faked; measurement.method_base's decoder walk is the real one."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace as NS

import numpy as np
import pytest

import measurement
import measurement.build as BD
import measurement.precision as PR
import measurement.sparsity as SP
from measurement import prepare as P
from measurement.store import RunConfig
from measurement.testing import SizedTensor


class Linear:
    def __init__(self, i, o):
        self.in_features, self.out_features = i, o


class Layer:
    def __init__(self, llama=True):
        self.llama = llama
        self.mods = {"self_attn.q_proj": Linear(64, 64), "mlp.up_proj": Linear(64, 128), "input_layernorm": object()}

    def named_modules(self):
        yield "", self
        yield from self.mods.items()



class Net:
    def __init__(self, tied=False, llama=True):
        self.config = NS(vocab_size=100, hidden_size=64, tie_word_embeddings=tied)
        self.model = NS(layers=[Layer(llama), Layer(llama)])
        self.emb = SizedTensor(100 * 64)
        self._advisor_notes = []

    def parameters(self):
        return [self.emb, SizedTensor(2 * (64 * 64 + 64 * 128)), SizedTensor(64)]

    def get_input_embeddings(self):
        return NS(weight=self.emb)


MATMUL = 2 * (64 * 64 + 64 * 128) + 100 * 64  # decoder linears + lm_head
CPU_BYTES = 2 * (100 * 64 + 2 * (64 * 64 + 64 * 128) + 64)


@pytest.fixture
def fk(monkeypatch):
    log = NS(build=[], apply=[], cuda=[], alloc=[1e9, 5e9], fuse=[])
    torch = types.ModuleType("torch")
    torch.float16, torch.bfloat16 = "float16", "bfloat16"
    torch.nn = NS(Linear=Linear)

    def reset():
        log.cuda.append("dynamo.reset")
        raise RuntimeError("dynamo not initialised")

    torch._dynamo = NS(reset=reset)
    torch.cuda = NS(empty_cache=lambda: log.cuda.append("empty_cache"),
                    synchronize=lambda: log.cuda.append("synchronize"),
                    memory_allocated=lambda dev: log.alloc.pop(0))

    class Generator:
        def manual_seed(self, s):
            self.rng = np.random.default_rng(s)
            return self

    class Ids(np.ndarray):
        def to(self, device):
            self.on = device
            return self

    torch.Generator = Generator
    torch.randint = lambda lo, hi, shape, generator: generator.rng.integers(lo, hi, size=shape).view(Ids)
    torch.inference_mode = lambda: __import__("contextlib").nullcontext()
    monkeypatch.setitem(sys.modules, "torch", torch)

    def build_model(model_id, *, weights="random", device="cuda", dtype=None, catalog=None, config=None):
        log.build.append((model_id, weights, dtype))
        src = "random" if weights == "random" else f"hf:{weights}"
        return log.net, NS(vocab_size=100), src

    def sparsity(model, s, calib_batches=None):
        log.apply.append(("sparsity", s, calib_batches))
        if s != "dense":
            model._advisor_notes.append(f"{s}: masked")

    def precision(model, p, calib_batches=None):
        log.apply.append(("precision", p, calib_batches))

    monkeypatch.setattr(BD, "build_model", build_model)
    monkeypatch.setattr(SP, "apply_sparsity", sparsity)
    monkeypatch.setattr(PR, "apply_precision", precision)
    dg = types.ModuleType("measurement.decode_graph")

    def fuse_projections(layer):
        if not layer.llama:
            raise AttributeError("'Layer' object has no attribute 'self_attn'")
        log.fuse.append(layer)
        return ("qkv", None, None) if len(log.fuse) == 1 else (None, None, "gu")

    dg.fuse_projections = fuse_projections
    monkeypatch.setitem(sys.modules, "measurement.decode_graph", dg)
    monkeypatch.setattr(measurement, "decode_graph", dg, raising=False)
    log.net = Net()
    return log


CPU, CUDA = NS(type="cpu"), NS(type="cuda")


def test_random_weights_with_a_calibrated_mask_on_cpu(fk):
    ctx = P.prepare_model(RunConfig(model="llama3.1-8b", sparsity="2:4-wanda"), CPU)
    assert fk.build == [("llama3.1-8b", "random", "bfloat16")]
    (sp, pr) = fk.apply  # sparsity first, then precision
    assert sp[:2] == ("sparsity", "2:4-wanda") and len(sp[2]) == 4  # random-token calibration batches
    assert all(b.shape == (1, 256) and b.on is CPU and (b < 100).all() for b in sp[2])
    assert pr == ("precision", "bf16", None)
    assert ctx.notes == ["calibration: random tokens through random weights (masks/choices carry no quality "
                         "meaning)", "2:4-wanda: masked"]
    assert ctx.weights_source == "random" and ctx.weights_bytes == CPU_BYTES
    assert ctx.step_weight_bytes == CPU_BYTES - 2 * 100 * 64  # the embedding is gathered, not streamed
    assert ctx.matmul_params == MATMUL and ctx.model is fk.net and ctx.apply_s >= 0
    assert fk.cuda == []  # nothing on the GPU
    assert [b.tolist() for b in P.calib_batches_for(NS(vocab_size=100), CPU, n=2, seq=8, seed=3)] == \
        [b.tolist() for b in P.calib_batches_for(NS(vocab_size=100), CPU, n=2, seq=8, seed=3)]


def test_awq_on_real_weights_on_cuda(fk):
    fk.net = Net(tied=True)
    calib = ["batch0", "batch1"]
    ctx = P.prepare_model(RunConfig(model="llama3.1-8b", precision="awq-int4", weights="org/model"), CUDA,
                          calib=calib)
    assert fk.build == [("llama3.1-8b", "org/model", "bfloat16")] and ctx.weights_source == "hf:org/model"
    assert fk.apply == [("sparsity", "dense", calib), ("precision", "awq-int4", calib)]  # AWQ scales calibrated
    assert ctx.notes == []
    assert ctx.weights_bytes == 4e9 and ctx.step_weight_bytes == 4e9  # allocator growth; tied lm_head
    assert fk.cuda == ["empty_cache", "synchronize", "empty_cache"]


def test_awq_on_random_weights_and_fp16(fk):
    ctx = P.prepare_model(RunConfig(model="m", precision="awq-int4"), CPU)
    assert fk.apply == [("sparsity", "dense", None), ("precision", "awq-int4", None)]  # nothing to calibrate
    assert ctx.notes == ["awq-int4 on random weights: no AWQ scale search (same int4 g128 kernels)"]
    P.prepare_model(RunConfig(model="m", precision="fp16"), CPU)
    assert fk.build[-1] == ("m", "random", "float16")


def test_fuse_and_release(fk):
    ctx = P.ModelContext(fk.net, fk.net.config, "random", 1.0, 1.0, 1.0, CUDA)
    P.fuse_model(ctx)
    assert ctx.notes == ["regional-graph-fused: q|k|v and gate|up weights merged in 2 layers"]
    assert fk.cuda == ["synchronize", "empty_cache"]
    other = P.ModelContext(Net(llama=False), None, "random", 1.0, 1.0, 1.0, CPU)
    P.fuse_model(other)  # not a Llama-shaped layer: left alone, the decoder will refuse it
    assert other.notes == []
    fk.cuda.clear()
    P._release(CPU)
    assert fk.cuda == ["dynamo.reset"]  # a failing dynamo reset is not an error
    P._release(CUDA)
    assert fk.cuda == ["dynamo.reset", "dynamo.reset", "empty_cache"]
    assert P._mem_alloc(CPU) == 0 and P._cuda("cuda") and not P._cuda(CPU)
