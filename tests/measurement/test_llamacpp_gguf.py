"""measurement.llamacpp.gguf_arch beyond tests/measurement/test_llamacpp.py, without the gguf package: the
family fallbacks of the architecture mapping, metadata parsing of numeric arrays and skipped strings, and
write_gguf's tokenizer padding and tensor contents recorded through a fake gguf writer."""
from __future__ import annotations

import enum
import struct
import sys
import types
from types import SimpleNamespace as NS

import numpy as np
import pytest

from measurement.llamacpp import gguf_arch as G


def _s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def vocab_file(path, n=10):
    """A vocabulary GGUF like llama.cpp's models/ggml-vocab-*.gguf: tokens, scores and types for n tokens."""
    kv = (_s("general.architecture") + struct.pack("<I", 8) + _s("llama")
          + _s("tokenizer.ggml.model") + struct.pack("<I", 8) + _s("llama")
          + _s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, n) + b"".join(_s(f"t{i}") for i in range(n))
          + _s("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, n) + struct.pack(f"<{n}f", *range(n))
          + _s("tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 5, n) + struct.pack(f"<{n}i", *[1] * n)
          + _s("general.name") + struct.pack("<I", 8) + _s("skipped")
          + _s("tokenizer.ggml.add_bos_token") + struct.pack("<I", 7) + b"\x01")
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 7) + kv)
    return path


def test_read_kv_numeric_arrays_and_skipped_entries(tmp_path):
    kv = G.read_kv(vocab_file(tmp_path / "v.gguf"))
    assert set(kv) == {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                       "tokenizer.ggml.token_type", "tokenizer.ggml.add_bos_token"}
    assert kv["tokenizer.ggml.scores"] == (9, 6, [float(i) for i in range(10)])
    assert kv["tokenizer.ggml.token_type"] == (9, 5, [1] * 10) and kv["tokenizer.ggml.add_bos_token"] == (7, None, True)
    assert G.read_kv(tmp_path / "v.gguf", prefix="general.") == {"general.architecture": (8, None, "llama"),
                                                                 "general.name": (8, None, "skipped")}
    (tmp_path / "x.bin").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ValueError, match="is not a GGUF file"):
        G.read_tensor_table(tmp_path / "x.bin")


@pytest.mark.parametrize("mid,family,key", [("qwen2-7b", "", "qwen2.5"), ("mistral-nemo", "", "mistral"),
                                            ("llama2-70b", "", "llama2"), ("llama3-8b", "", "llama3"),
                                            ("llama3.1-405b", "", "llama3.1"), ("llama3.3-70b", "llama3", "llama3.1"),
                                            ("x-1b", "llama2", "llama2")])
def test_family_fallbacks(mid, family, key):
    assert G._family_key(NS(id=mid, family=family)) == key


def test_unknown_architecture():
    with pytest.raises(KeyError, match="no GGUF architecture mapping for gpt-9"):
        G._family_key(NS(id="gpt-9", family="gpt"))


class _VT(enum.IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9


def _fake_gguf():
    g = types.ModuleType("gguf")
    g.GGUFValueType = _VT
    g.TokenType = NS(UNUSED=5)

    class Writer:
        last = None

        def __init__(self, path, arch, use_temp_file):
            self.path, self.arch, self.kv, self.tensors = path, arch, {}, {}
            Writer.last = self

        def add_string(self, k, v):
            self.kv[k] = ("str", v)

        def add_float32(self, k, v):
            self.kv[k] = ("f32", v)

        def add_uint32(self, k, v):
            self.kv[k] = ("u32", v)

        def add_key_value(self, k, v, vt, sub_type=None):
            self.kv[k] = (vt, sub_type, v)

        def add_tensor(self, name, arr):
            self.tensors[name] = arr

        def write_header_to_file(self):
            pass

        def write_kv_data_to_file(self):
            pass

        def write_tensors_to_file(self):
            pass

        def close(self):
            open(self.path, "wb").write(b"GGUF" + b"\0" * sum(a.nbytes for a in self.tensors.values()))

    g.GGUFWriter = Writer
    return g


def test_write_gguf_pads_the_vocabulary_and_fills_tensors(tmp_path, monkeypatch):
    g = _fake_gguf()
    monkeypatch.setitem(sys.modules, "gguf", g)
    llm = NS(id="llama3.1-tiny", family="llama3.1", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=16, tie_word_embeddings=False,
             max_position_embeddings=256, rope_theta=500000.0)
    spec = G.arch_spec(llm)
    vocab_file(tmp_path / spec.vocab_file)
    info = G.write_gguf(spec, tmp_path / "m.gguf", tmp_path, pool_elems=1 << 10)
    w = g.GGUFWriter.last
    assert info["params"] == spec.n_params and info["bytes"] == (tmp_path / "m.gguf").stat().st_size
    toks = w.kv["tokenizer.ggml.tokens"]
    assert toks[0] == _VT.ARRAY and toks[1] == _VT.STRING and toks[2] == [f"t{i}" for i in range(10)] + [
        f"[PAD{i}]" for i in range(10, 16)]
    assert w.kv["tokenizer.ggml.token_type"][2] == [1] * 10 + [5] * 6  # padding tokens are UNUSED
    assert w.kv["tokenizer.ggml.scores"][2][10:] == [-1000.0] * 6
    assert w.kv["tokenizer.ggml.model"] == (_VT.STRING, None, "llama")
    assert "general.architecture" not in w.kv and w.kv[f"{spec.arch}.block_count"] == ("u32", 2)
    assert set(w.tensors) == {t.name for t in spec.tensors}
    for t in spec.tensors:
        a = w.tensors[t.name]
        assert tuple(a.shape) == tuple(t.shape), t.name
        if t.kind == "vector" and t.name != "rope_freqs.weight" and not t.name.endswith(".bias"):
            assert (a == 1).all() and a.dtype == np.float32  # norms start at one
        elif t.kind != "vector":
            assert a.dtype == np.float16 and 0 < float(np.abs(a).std()) < 0.05  # random N(0, 0.02) weights
    rope = w.tensors["rope_freqs.weight"]  # Llama 3.1's frequency scaling, one factor per rotary pair
    assert rope.tolist() == pytest.approx(G.llama3_rope_freqs(16, 500000.0, spec.rope_scaling)) and rope[0] == 1.0
