"""Catalogs of GPUs, LLMs and compression methods: YAML data with a schema and a loader.

>>> from profiles import load
>>> cat = load()
>>> cat.gpu("l4").mem_bw_gbps
"""
from .catalog import (GPU, LLM, Catalog, Method, UnknownProfileError, default_engine_id, harness_engine_id, load,
                      load_quality)
from .schema import SchemaError

__all__ = ["GPU", "LLM", "Catalog", "Method", "UnknownProfileError", "SchemaError", "load", "load_quality",
           "default_engine_id", "harness_engine_id"]
