"""Load and look up the catalogs in ``profiles/data`` (GPUs, LLMs, methods, published quality).

Look-ups accept ids and aliases, case-insensitively; an unknown name raises
:class:`UnknownProfileError` with close matches; an ambiguous alias resolves to the entry the
catalog names and says so in :attr:`Resolved.note`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any


from . import schema

DATA_DIR = Path(__file__).resolve().parent / "data"


class UnknownProfileError(LookupError):
    def __init__(self, kind: str, name: str, suggestions: list[str]):
        self.kind, self.name, self.suggestions = kind, name, suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown {kind} '{name}'.{hint} (`advisor profiles list {kind}s` shows all)")


def _read(path: Path) -> Any:
    """A YAML catalog, parsed once per content (profiles.cache keeps the parse as JSON)."""
    from . import cache

    raw = Path(path).read_bytes()
    key = cache.digest(raw)
    hit = cache.get("yaml", key)
    if hit is not None:
        return hit
    import yaml  # only on a cache miss: a warm start never imports it

    doc = yaml.load(raw.decode("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    cache.put("yaml", key, doc)
    return doc


@dataclass(frozen=True)
class GPU:
    """One GPU profile. Bandwidth in GB/s, peaks in dense TFLOP/s (TOPS for int), power in W."""

    id: str
    name: str
    vendor: str
    architecture: str
    compute_capability: str | None
    memory_gb: float
    mem_bw_gbps: float
    tflops_dense: dict
    tdp_w: float
    sparse_2_4: bool | None
    raw: dict = field(repr=False, compare=False)

    @property
    def cc(self) -> tuple[int, int]:
        """Compute capability as a tuple; AMD parts map to (0, 0) (no CUDA kernels)."""
        if not self.compute_capability:
            return (0, 0)
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    def peak_tflops(self, dtype: str) -> float | None:
        """Dense tensor peak for ``dtype`` (fp16, bf16, fp8, int8, int4), None if absent."""
        v = self.tflops_dense.get(dtype)
        return float(v) if v is not None else None

    @property
    def idle_w(self) -> float | None:
        return self.raw.get("idle_w")

    @property
    def cloud_usd_per_hour(self) -> float | None:
        p = self.raw.get("cloud_price") or {}
        return p.get("usd_per_hour")

    @property
    def list_price_usd(self) -> float | None:
        p = self.raw.get("list_price") or {}
        return p.get("usd")

    @property
    def interconnect(self) -> dict:
        return self.raw.get("interconnect") or {}

    def source(self, key: str) -> str:
        src = self.raw.get("sources", {})
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in src:
                return str(src[".".join(parts[:i])])
        return "no source recorded"


@dataclass(frozen=True)
class LLM:
    """One LLM architecture, numbers as in its Hugging Face config.json."""

    id: str
    hf_id: str
    family: str
    model_type: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    published_params_b: float
    raw: dict = field(repr=False, compare=False)

    @property
    def attention_bias(self) -> bool:
        return bool(self.raw.get("attention_bias", False))

    def hf_config_dict(self) -> dict:
        """Keys for ``transformers.AutoConfig.for_model(model_type, **d)``."""
        keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
                "max_position_embeddings", "rope_theta", "rope_scaling", "attention_bias",
                "rms_norm_eps", "sliding_window")
        d = {k: self.raw[k] for k in keys if k in self.raw and self.raw[k] is not None}
        if self.model_type != "llama":
            d.pop("attention_bias", None)
            d.pop("head_dim", None) if self.head_dim * self.num_attention_heads == self.hidden_size else None
        return d


@dataclass(frozen=True)
class Method:
    """A compression method: a precision, a sparsity pattern or a KV-cache policy."""

    id: str
    kind: str
    name: str
    min_cc: str | None
    raw: dict = field(repr=False, compare=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def min_cc_tuple(self) -> tuple[int, int]:
        if not self.min_cc:
            return (0, 0)
        a, b = self.min_cc.split(".")
        return int(a), int(b)


@dataclass(frozen=True)
class Resolved:
    id: str
    note: str | None = None


class Catalog:
    """All catalogs, loaded and checked once."""

    def __init__(self, data_dir: Path = DATA_DIR):
        self.data_dir = Path(data_dir)
        g = _read(self.data_dir / "gpus.yaml")
        self.gpus = {e["id"]: _gpu(e) for e in schema.check_catalog(g, "gpus", schema.GPU_FIELDS, "gpus.yaml")}
        self._gpu_ambiguous = g.get("ambiguous_aliases") or {}
        m = _read(self.data_dir / "llms.yaml")
        self.llms = {e["id"]: _llm(e) for e in schema.check_catalog(m, "llms", schema.LLM_FIELDS, "llms.yaml")}
        t = _read(self.data_dir / "methods.yaml")
        self.methods = {e["id"]: Method(e["id"], e["kind"], e["name"], e.get("min_cc"), e)
                        for e in schema.check_catalog(t, "methods", schema.METHOD_FIELDS, "methods.yaml")}
        from .engines import Engine, check_engines
        en = _read(self.data_dir / "engines.yaml")
        self.engines = {e["id"]: Engine(e["id"], e["name"], e["version"], e)
                        for e in check_engines(en, set(self.methods))}
        self._aliases = {
            "engine": _alias_map(self.engines),
            "gpu": _alias_map(self.gpus),
            "model": _alias_map(self.llms),
            "method": _alias_map(self.methods),
        }

    def resolve(self, kind: str, name: str) -> Resolved:
        key = _norm(name)
        amb = {_norm(k): v for k, v in self._gpu_ambiguous.items()} if kind == "gpu" else {}
        if key in amb:
            a = amb[key]
            return Resolved(a["picks"], f"'{name}' is ambiguous ({', '.join(a['candidates'])}); "
                                        f"using {a['picks']}. Name one to choose.")
        table = self._aliases[kind]
        if key in table:
            return Resolved(table[key])
        close = difflib.get_close_matches(key, list(table), n=4, cutoff=0.5)
        sugg = sorted({table[c] for c in close}, key=lambda i: close.index(next(c for c in close if table[c] == i)))
        if kind == "engine":  # few enough to list them all
            sugg = sugg + [e for e in self.engines if e not in sugg]
        raise UnknownProfileError(kind, name, sugg)

    def gpu(self, name: str) -> GPU:
        return self.gpus[self.resolve("gpu", name).id]

    def llm(self, name: str) -> LLM:
        return self.llms[self.resolve("model", name).id]

    def engine(self, name: str):
        return self.engines[self.resolve("engine", name).id]

    @property
    def default_engine(self) -> str:
        """The id of the engine a request runs on when it names none (engines.yaml ``default: true``)."""
        return next(e.id for e in self.engines.values() if e.get("default"))

    @property
    def harness_engine(self) -> str:
        """The id of the engine that is this project's measurement harness (engines.yaml ``methods: "*"``)."""
        return next(e.id for e in self.engines.values() if e.runs_everything)

    def method(self, name: str) -> Method:
        return self.methods[self.resolve("method", name).id]

    def methods_of(self, kind: str) -> list[Method]:
        return [m for m in self.methods.values() if m.kind == kind]

    def default_method(self, kind: str) -> str:
        """The id of the one method of ``kind`` marked ``default`` (what a candidate has when it names none)."""
        ids = [m.id for m in self.methods_of(kind) if m.get("default")]
        if len(ids) != 1:
            raise schema.SchemaError(f"methods.yaml: {kind} needs exactly one method with 'default: true', has {ids}")
        return ids[0]

    @property
    def quality_rows(self) -> list[dict]:
        return load_quality(self.data_dir)


def _norm(s: str) -> str:
    return str(s).strip().lower().replace("_", "-").replace(" ", "-")


def _alias_map(entries: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for eid, e in entries.items():
        for a in [eid, *(e.raw.get("aliases") or [])]:
            out.setdefault(_norm(a), eid)
        if hasattr(e, "name"):
            out.setdefault(_norm(e.name), eid)
        hf = e.raw.get("hf_id")
        if hf:
            out.setdefault(_norm(hf), eid)
            out.setdefault(_norm(hf.split("/")[-1]), eid)
    return out


def _gpu(e: dict) -> GPU:
    return GPU(e["id"], e["name"], e["vendor"], e["architecture"], e.get("compute_capability"),
               float(e["memory_gb"]), float(e["mem_bw_gbps"]), dict(e["tflops_dense"]), float(e["tdp_w"]),
               e.get("sparse_2_4"), e)


def _llm(e: dict) -> LLM:
    keys = ("id", "hf_id", "family", "model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
            "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
            "max_position_embeddings", "published_params_b")
    return LLM(*(e[k] for k in keys), raw=e)


@lru_cache(maxsize=4)
def load_quality(data_dir: Path = DATA_DIR) -> list[dict]:
    doc = _read(Path(data_dir) / "quality_published.yaml")
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if doc.get("schema_version") != schema.SCHEMA_VERSION or not isinstance(rows, list):
        raise schema.SchemaError("quality_published.yaml: needs schema_version 1 and a 'rows' list")
    for i, r in enumerate(rows):
        schema.check_entry(r, schema.QUALITY_FIELDS, f"quality_published.yaml: rows[{i}]")
    return rows


@lru_cache(maxsize=4)
def load_training_tokens(data_dir: Path = DATA_DIR) -> list[dict]:
    """quality_published.yaml ``training_tokens``: pre-training tokens (trillions) per model family and size range."""
    doc = _read(Path(data_dir) / "quality_published.yaml")
    entries = doc.get("training_tokens") or []
    if not isinstance(entries, list):
        raise schema.SchemaError("quality_published.yaml: 'training_tokens' must be a list")
    known = {f.key for f in schema.TRAINING_TOKENS_FIELDS}
    for i, e in enumerate(entries):
        where = f"quality_published.yaml: training_tokens[{i}]"
        schema.check_entry(e, schema.TRAINING_TOKENS_FIELDS, where)
        extra = sorted(set(e) - known)
        if extra:
            raise schema.SchemaError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(known))}")
        if e["tokens_t"] <= 0:
            raise schema.SchemaError(f"{where}: 'tokens_t' is {e['tokens_t']}; must be > 0 (trillions of tokens)")
    return entries


@lru_cache(maxsize=4)
def load(data_dir: Path = DATA_DIR) -> Catalog:
    """The shipped catalogs (cached)."""
    return Catalog(Path(data_dir))


def default_engine_id() -> str:
    """The shipped catalog's default engine id (a dataclass field's default_factory)."""
    return load().default_engine


def harness_engine_id() -> str:
    """The shipped catalog's harness engine id (a dataclass field's default_factory)."""
    return load().harness_engine
