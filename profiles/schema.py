"""Schemas of the YAML catalogs under ``profiles/data``.

A catalog is a mapping with ``schema_version`` and one list of entries. Each entry is checked
against a :class:`Field` list: required keys, types, allowed values, and the rule that every
number carries a source (``sources`` holds a key for each numeric field, or for the block
that contains it). Units live in key names (``mem_bw_gbps``, ``tdp_w``, ``memory_gb``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .dtypes import MATMUL_DTYPES

SCHEMA_VERSION = 1


class SchemaError(ValueError):
    """A catalog entry does not match its schema. The message names file, entry and key."""


@dataclass(frozen=True)
class Field:
    key: str
    types: tuple
    required: bool = True
    nullable: bool = False
    choices: tuple | None = None
    cited: bool = False  # a non-null value must be covered by ``sources``


NUM = (int, float)

GPU_FIELDS = (
    Field("id", (str,)),
    Field("name", (str,)),
    Field("aliases", (list,), required=False),
    Field("vendor", (str,), choices=("nvidia", "amd")),
    Field("architecture", (str,)),
    Field("compute_capability", (str,), nullable=True, cited=True),
    Field("launch_year", (int,), required=False, nullable=True, cited=True),
    Field("memory_gb", NUM, cited=True),
    Field("memory_type", (str,), required=False, nullable=True),
    Field("mem_bw_gbps", NUM, cited=True),
    Field("tflops_dense", (dict,), cited=True),
    Field("fp32_tflops", NUM, required=False, nullable=True, cited=True),
    Field("sm_count", (int,), required=False, nullable=True, cited=True),
    Field("boost_clock_mhz", NUM, required=False, nullable=True, cited=True),
    Field("sparse_2_4", (bool,), nullable=True),
    Field("tdp_w", NUM, cited=True),
    Field("idle_w", NUM, required=False, nullable=True, cited=True),
    Field("interconnect", (dict,), required=False, nullable=True, cited=True),
    Field("cloud_price", (dict,), required=False, nullable=True),
    Field("list_price", (dict,), required=False, nullable=True),
    Field("sources", (dict,)),
    Field("source_quality", (str,), required=False),
    Field("notes", (str,), required=False, nullable=True),
)

LLM_FIELDS = (
    Field("id", (str,)),
    Field("hf_id", (str,)),
    Field("aliases", (list,), required=False),
    Field("family", (str,)),
    Field("model_type", (str,)),
    Field("architectures", (list,), required=False),
    Field("num_hidden_layers", (int,)),
    Field("hidden_size", (int,)),
    Field("intermediate_size", (int,)),
    Field("num_attention_heads", (int,)),
    Field("num_key_value_heads", (int,)),
    Field("head_dim", (int,)),
    Field("vocab_size", (int,)),
    Field("tie_word_embeddings", (bool,)),
    Field("max_position_embeddings", (int,)),
    Field("rope_theta", NUM, required=False, nullable=True),
    Field("rope_scaling", (dict,), required=False, nullable=True),
    Field("attention_bias", (bool,), required=False),
    Field("rms_norm_eps", NUM, required=False, nullable=True),
    Field("sliding_window", (int,), required=False, nullable=True),
    Field("torch_dtype", (str,), required=False, nullable=True),
    Field("published_params_b", NUM, cited=True),
    Field("sources", (dict,)),
    Field("notes", (str,), required=False, nullable=True),
)

METHOD_KINDS = ("precision", "sparsity", "kv")
METHOD_FIELDS = (
    Field("id", (str,)),
    Field("kind", (str,), choices=METHOD_KINDS),
    Field("name", (str,)),
    Field("aliases", (list,), required=False),
    Field("bytes_per_weight", NUM, required=False, nullable=True),
    Field("bytes_per_kv_elem", NUM, required=False, nullable=True),
    Field("head_bytes_per_weight", NUM, required=False),
    Field("row_scale_bytes", NUM, required=False),
    Field("metadata_bits_per_weight", NUM, required=False),
    Field("drop_fractions", (list,), required=False),
    Field("budgets", (list,), required=False),
    Field("quality_prefers", (str,), required=False),
    Field("quality_chains", (list,), required=False),   # methods ordered by quality_bits within a chain
    Field("quality_bits", NUM, required=False),         # stored bits per weight / KV element (monotone order)
    Field("density", NUM, required=False),
    Field("default", (bool,), required=False),          # what a candidate has when the kind is not named
    Field("torch_dtype", (str,), required=False, choices=("float16", "bfloat16")),  # unquantized torch weights
    Field("matmul_dtype", (str,), required=False, choices=MATMUL_DTYPES),  # tflops_dense key of its matmuls
    Field("rocm", (bool,), required=False),             # the advisor models a ROCm kernel path for it
    Field("kv_dequant", (str,), required=False, choices=("int", "float")),  # cache dequantized every step
    Field("whole_prompt_prefill", (bool,), required=False),  # scores the whole prompt: prefill unchunked
    Field("harness", (dict,), required=False),  # how measurement/ runs it: {impl: registry key, its parameters}
    Field("aiconfigurator_gemm", (str,), required=False),  # AIConfigurator 0.12.0 gemm_quant_mode
    Field("llm_analysis_dtype", (str,), required=False),   # llm-analysis 0.2.2 dtype config name
    Field("engine_kv_dtypes", (list,), required=False),   # engine rows' kv_dtype names of this KV cache
    Field("engine_precision_labels", (list,), required=False),  # engine rows' other precision labels for it
    Field("quality_family", (str,), required=False),     # group of the quality validation's report
    Field("quality_llama3_sensitive", (bool,), required=False),  # Llama 2 <-> 3 transfer scaled (quality model)
    Field("min_cc", (str,), nullable=True),
    Field("needs", (list,), required=False),
    Field("kernels", (dict,), required=False),
    Field("keeps_16bit", (list,), required=False),
    Field("composes_with", (list,), required=False),
    Field("vllm", (str,), required=False, nullable=True),
    Field("transformers", (str,), required=False, nullable=True),
    Field("sources", (dict,)),
    Field("notes", (str,), required=False, nullable=True),
)

QUALITY_FIELDS = (
    Field("model", (str,)),
    Field("precision", (str,)),
    Field("sparsity", (str,)),
    Field("kv", (str,)),
    Field("kv_budget", (int,), required=False, nullable=True),
    Field("metric", (str,)),
    Field("seq_len", (int,), required=False, nullable=True),
    Field("baseline", NUM, nullable=True),
    Field("value", NUM),
    Field("higher_is_better", (bool,)),
    Field("paper", (str,)),
    Field("url", (str,)),
    Field("table", (str,), nullable=True),
    Field("verified", (bool,), required=False),
)

# quality_published.yaml ``training_tokens``: pre-training tokens (trillions) of a model family, for the quality
# regression's size law; a size range (billions, min inclusive, max exclusive) where a family's sizes differ
TRAINING_TOKENS_FIELDS = (
    Field("family", (str,)),
    Field("min_size_b", NUM, required=False, nullable=True),
    Field("max_size_b", NUM, required=False, nullable=True),
    Field("tokens_t", NUM),
    Field("url", (str,)),
    Field("source", (str,)),
)


def _covered(key: str, sources: dict) -> bool:
    """A key is cited when ``sources`` has it, or a dotted prefix of it."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in sources for i in range(1, len(parts) + 1))


def check_entry(entry: Any, fields: Iterable[Field], where: str) -> None:
    if not isinstance(entry, dict):
        raise SchemaError(f"{where}: expected a mapping, got {type(entry).__name__}")
    sources = entry.get("sources") or {}
    for f in fields:
        if f.key not in entry:
            if f.required:
                raise SchemaError(f"{where}: missing required key '{f.key}'")
            continue
        value = entry[f.key]
        if value is None:
            if not f.nullable:
                raise SchemaError(f"{where}: '{f.key}' may not be null")
            continue
        if isinstance(value, bool) and bool not in f.types:
            raise SchemaError(f"{where}: '{f.key}' must be {_names(f.types)}, got a boolean")
        if not isinstance(value, f.types):
            raise SchemaError(f"{where}: '{f.key}' must be {_names(f.types)}, got {value!r}")
        if f.choices and value not in f.choices:
            raise SchemaError(f"{where}: '{f.key}' is {value!r}; allowed: {', '.join(f.choices)}")
        if f.cited and not _covered(f.key, sources) and _has_number(value):
            raise SchemaError(f"{where}: '{f.key}' has a number but no entry in 'sources'")


def _has_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, NUM):
        return True
    if isinstance(value, str):
        return True
    if isinstance(value, dict):
        return any(_has_number(v) for v in value.values())
    return False


def _names(types: tuple) -> str:
    return " or ".join(t.__name__ for t in types)


def check_catalog(doc: Any, list_key: str, fields: Iterable[Field], path: str) -> list[dict]:
    """Check a whole catalog document and return its entries."""
    if not isinstance(doc, dict):
        raise SchemaError(f"{path}: top level must be a mapping")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{path}: schema_version is {version!r}; this advisor reads {SCHEMA_VERSION}")
    entries = doc.get(list_key)
    if not isinstance(entries, list) or not entries:
        raise SchemaError(f"{path}: '{list_key}' must be a non-empty list")
    fields = tuple(fields)
    for i, entry in enumerate(entries):
        name = entry.get("id", f"#{i}") if isinstance(entry, dict) else f"#{i}"
        check_entry(entry, fields, f"{path}: {list_key}[{name}]")
    return entries
