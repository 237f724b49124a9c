"""Random-weight GGUF files of real architectures, from the catalog's model configs.

``arch_spec(llm)`` maps a catalog model (profiles ``LLM``) to the llama.cpp architecture, the GGUF
metadata and the list of tensors (name, numpy shape, dtype) that the real converted model has; this part
is pure Python and needs no ``gguf`` package (the CPU tests check it). ``write_gguf`` writes the file
with gguf-py (from the carried llama.cpp tree) as F16 (2-D weights) / F32 (norms, biases), drawing the
weights as slices of one random pool (N(0, 0.02), so activations stay finite), with the real
vocabulary from one of llama.cpp's vocab files, padded with [PAD] tokens to the model's vocab_size as
the HF converter does. llama-quantize then makes every other type from that F16 file.

Real-model constants the catalog does not hold (rope theta, norm epsilon, Llama 3 rope scaling) are
kept in ``_FAMILY`` below, from the models' config.json files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from profiles.dtypes import FP16

# family -> (llama.cpp arch, vocab file, rope theta, rms eps, llama3 rope scaling factor or None)
_FAMILY = {
    "llama3.1": ("llama", "ggml-vocab-llama-bpe.gguf", 500000.0, 1e-5, 8.0),
    "llama3.2": ("llama", "ggml-vocab-llama-bpe.gguf", 500000.0, 1e-5, 32.0),
    "llama3": ("llama", "ggml-vocab-llama-bpe.gguf", 500000.0, 1e-5, None),
    "llama2": ("llama", "ggml-vocab-llama-spm.gguf", 10000.0, 1e-5, None),
    "mistral": ("llama", "ggml-vocab-llama-spm.gguf", 10000.0, 1e-5, None),
    "qwen2.5": ("qwen2", "ggml-vocab-qwen2.gguf", 1000000.0, 1e-6, None),
}


def _family_key(llm) -> str:
    mid = llm.id
    for k in ("llama3.1", "llama3.2"):
        if mid.startswith(k):
            return k
    if mid.startswith("llama3.3"):  # Llama 3.3's config repeats 3.1's rope (theta 5e5, llama3 scaling x8)
        return "llama3.1"
    fam = getattr(llm, "family", "") or ""
    if fam in _FAMILY:
        return fam
    if mid.startswith("qwen2"):
        return "qwen2.5"
    if mid.startswith("mistral"):
        return "mistral"
    if mid.startswith("llama2"):
        return "llama2"
    if mid.startswith("llama3"):
        return "llama3"
    raise KeyError(f"no GGUF architecture mapping for {mid}")


@dataclass
class TensorSpec:
    name: str
    shape: tuple  # numpy order (rows = output features); GGUF ne is the reverse
    kind: str  # 'weight' (2-D matmul / embedding, F16) or 'vector' (norm / bias / rope factors, F32)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ArchSpec:
    model: str
    arch: str
    vocab_file: str
    kv: dict  # GGUF metadata without the tokenizer
    tensors: list[TensorSpec] = field(default_factory=list)
    tied: bool = False
    rope_scaling: float | None = None

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors if t.name != "rope_freqs.weight")

    def params_of(self, pred) -> int:
        return sum(t.numel for t in self.tensors if pred(t.name))

    @property
    def embedding_params(self) -> int:
        return self.params_of(lambda n: n == "token_embd.weight")

    @property
    def layer_params(self) -> int:
        """Parameters of the transformer blocks (the matmuls every prompt token goes through)."""
        return self.params_of(lambda n: n.startswith("blk."))

    @property
    def output_params(self) -> int:
        """Parameters of the LM head (token_embd again when tied)."""
        return self.embedding_params if self.tied else self.params_of(lambda n: n == "output.weight")


def llama3_rope_freqs(head_dim: int, theta: float, factor: float, low: float = 1.0, high: float = 4.0,
                      original: int = 8192) -> list[float]:
    """The rope_freqs factors convert_hf_to_gguf writes for Llama 3.1/3.2 (llama3 rope scaling)."""
    low_wavelen, high_wavelen = original / low, original / high
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return out


def arch_spec(llm) -> ArchSpec:
    fam = _family_key(llm)
    arch, vocab_file, theta, eps, scaling = _FAMILY[fam]
    h, L = llm.hidden_size, llm.num_hidden_layers
    nh, nkv = llm.num_attention_heads, llm.num_key_value_heads
    hd = llm.head_dim or h // nh
    ff, V = llm.intermediate_size, llm.vocab_size
    tied = bool(llm.tie_word_embeddings)
    kv = {
        "general.architecture": arch,
        "general.name": f"{llm.id}-random",
        f"{arch}.context_length": int(llm.max_position_embeddings or 4096),
        f"{arch}.embedding_length": h,
        f"{arch}.block_count": L,
        f"{arch}.feed_forward_length": ff,
        f"{arch}.attention.head_count": nh,
        f"{arch}.attention.head_count_kv": nkv,
        f"{arch}.attention.key_length": hd,
        f"{arch}.attention.value_length": hd,
        f"{arch}.rope.freq_base": theta,
        f"{arch}.rope.dimension_count": hd,
        f"{arch}.attention.layer_norm_rms_epsilon": eps,
        f"{arch}.vocab_size": V,
        "general.file_type": 1,  # MOSTLY_F16
    }
    t: list[TensorSpec] = [TensorSpec("token_embd.weight", (V, h), "weight")]
    if scaling is not None:
        t.append(TensorSpec("rope_freqs.weight", (hd // 2,), "vector"))
    for i in range(L):
        p = f"blk.{i}."
        t += [TensorSpec(p + "attn_norm.weight", (h,), "vector"),
              TensorSpec(p + "attn_q.weight", (nh * hd, h), "weight"),
              TensorSpec(p + "attn_k.weight", (nkv * hd, h), "weight"),
              TensorSpec(p + "attn_v.weight", (nkv * hd, h), "weight")]
        if arch == "qwen2":
            t += [TensorSpec(p + "attn_q.bias", (nh * hd,), "vector"),
                  TensorSpec(p + "attn_k.bias", (nkv * hd,), "vector"),
                  TensorSpec(p + "attn_v.bias", (nkv * hd,), "vector")]
        t += [TensorSpec(p + "attn_output.weight", (h, nh * hd), "weight"),
              TensorSpec(p + "ffn_norm.weight", (h,), "vector"),
              TensorSpec(p + "ffn_gate.weight", (ff, h), "weight"),
              TensorSpec(p + "ffn_up.weight", (ff, h), "weight"),
              TensorSpec(p + "ffn_down.weight", (h, ff), "weight")]
    t.append(TensorSpec("output_norm.weight", (h,), "vector"))
    if not tied:
        t.append(TensorSpec("output.weight", (V, h), "weight"))
    return ArchSpec(llm.id, arch, vocab_file, kv, t, tied, scaling)


def kv_bytes_per_token(llm, kv_dtype: str = "f16") -> float:
    """K and V cache bytes per token (all layers) at a llama.cpp cache type."""
    hd = llm.head_dim or llm.hidden_size // llm.num_attention_heads
    per_elem = {"f16": 2.0, FP16: 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "f32": 4.0}[kv_dtype]  # FP16: rows' name
    return 2 * llm.num_hidden_layers * llm.num_key_value_heads * hd * per_elem


def write_gguf(spec: ArchSpec, path, vocab_dir, seed: int = 0, pool_elems: int = 1 << 24) -> dict:
    """Write spec as an F16 GGUF at path (needs gguf-py and numpy). Returns {bytes, seconds, params}."""
    import time
    from pathlib import Path

    import numpy as np
    import gguf

    t0 = time.time()
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(pool_elems, dtype=np.float32) * 0.02).astype(np.float16)
    biggest = max(ts.numel for ts in spec.tensors)
    reps = -(-(biggest + pool_elems) // pool_elems)
    pool = np.tile(base, reps)  # periodic but cheap; each tensor starts at another offset

    w = gguf.GGUFWriter(str(path), spec.arch, use_temp_file=False)
    for k, v in spec.kv.items():
        if k == "general.architecture":
            continue
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, int(v))
    # tokenizer from llama.cpp's vocab file, padded to vocab_size
    V = spec.kv[f"{spec.arch}.vocab_size"]
    for k, (vt, sub, val) in read_kv(Path(vocab_dir) / spec.vocab_file).items():
        if k in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            val = list(val)[:V]
            pad = V - len(val)
            if pad > 0:
                n0 = len(val)
                val += ([f"[PAD{n0 + i}]" for i in range(pad)] if k.endswith("tokens") else
                        [int(gguf.TokenType.UNUSED)] * pad if k.endswith("token_type") else [-1000.0] * pad)
        w.add_key_value(k, val, gguf.GGUFValueType(vt),
                        sub_type=gguf.GGUFValueType(sub) if sub is not None else None)
    off = 0
    for ts in spec.tensors:
        if ts.kind == "vector":
            if ts.name == "rope_freqs.weight":
                arr = np.asarray(llama3_rope_freqs(ts.shape[0] * 2, spec.kv[f"{spec.arch}.rope.freq_base"],
                                                   spec.rope_scaling), dtype=np.float32)
            elif ts.name.endswith(".bias"):
                arr = pool[:ts.numel].astype(np.float32)
            else:
                arr = np.ones(ts.shape, dtype=np.float32)
        else:
            start = off % pool_elems
            arr = pool[start:start + ts.numel].reshape(ts.shape)
            off += 7919
        w.add_tensor(ts.name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = Path(path).stat().st_size
    return {"bytes": size, "seconds": round(time.time() - t0, 1), "params": spec.n_params}


def read_tensor_table(path) -> dict:
    """Tensor names, GGML type ids, element counts and byte sizes of a GGUF file, without the gguf
    package and without decoding the vocabulary (gguf-py's reader takes ~20 s on a Llama 3 vocabulary).
    A tensor's bytes are the distance to the next tensor's data (the last one: to the end of the file),
    so alignment padding (< 32 bytes a tensor) is counted with it."""
    import mmap
    import struct
    from pathlib import Path

    path = Path(path)
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            if mm[:4] != b"GGUF":
                raise ValueError(f"{path} is not a GGUF file")
            version, n_t, _ = struct.unpack_from("<IQQ", mm, 4)
            kv, pos = _read_kv_section(mm, lambda k: k == "general.alignment")
            alignment = kv["general.alignment"][2] if "general.alignment" in kv else 32
            infos = []
            for _ in range(n_t):
                name, pos = _gguf_str(mm, pos)
                (nd,) = struct.unpack_from("<I", mm, pos)
                dims = struct.unpack_from(f"<{nd}Q", mm, pos + 4)
                pos += 4 + 8 * nd
                ttype, off = struct.unpack_from("<IQ", mm, pos)
                pos += 12
                infos.append([name, ttype, math.prod(dims), off])
            data_start = -(-pos // alignment) * alignment
            size = len(mm)
        finally:
            mm.close()
    order = sorted(range(len(infos)), key=lambda i: infos[i][3])
    tensors = {}
    for j, i in enumerate(order):
        name, ttype, numel, off = infos[i]
        end = infos[order[j + 1]][3] if j + 1 < len(order) else size - data_start
        tensors[name] = {"type": ttype, "numel": numel, "bytes": end - off}
    return {"version": version, "tensors": tensors, "data_start": data_start, "file_bytes": size}


def read_kv(path, prefix: str = "tokenizer.") -> dict:
    """Metadata of a GGUF file whose key starts with ``prefix``: {key: (value_type, sub_type, value)}
    with GGUF value-type ids (8 string, 9 array, ...). Plain struct parsing, ~20x faster than gguf-py's
    reader on a vocabulary file."""
    from pathlib import Path

    return _read_kv_section(Path(path).read_bytes(), lambda k: k.startswith(prefix))[0]


_GGUF_FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _gguf_str(buf, p: int) -> tuple[str, int]:
    import struct

    (n,) = struct.unpack_from("<Q", buf, p)
    return bytes(buf[p + 8:p + 8 + n]).decode("utf-8", "replace"), p + 8 + n


def _read_kv_section(buf, want) -> tuple[dict, int]:
    """The metadata entries of a GGUF buffer whose key ``want(key)`` accepts, as {key: (value_type,
    sub_type, value)}, and the offset where the tensor infos start. Entries not wanted are skipped
    without decoding their strings (a vocabulary holds ~150k)."""
    import struct

    (n_kv,) = struct.unpack_from("<Q", buf, 16)
    pos, out = 24, {}
    for _ in range(n_kv):
        key, pos = _gguf_str(buf, pos)
        (vt,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        keep = want(key)
        sub = val = None
        if vt == 8:
            if keep:
                val, pos = _gguf_str(buf, pos)
            else:
                pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
        elif vt == 9:
            sub, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if sub == 8:
                val = [] if keep else None
                for _ in range(n):
                    if keep:
                        s_, pos = _gguf_str(buf, pos)
                        val.append(s_)
                    else:
                        pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
            else:
                sz = struct.calcsize(_GGUF_FMT[sub])
                val = list(struct.unpack_from(f"<{n}{_GGUF_FMT[sub]}", buf, pos)) if keep else None
                pos += sz * n
        else:
            (val,) = struct.unpack_from("<" + _GGUF_FMT[vt], buf, pos)
            pos += struct.calcsize(_GGUF_FMT[vt])
        if keep:
            out[key] = (vt, sub, val)
    return out, pos
