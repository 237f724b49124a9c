"""measurement.build: which kind of weights a --weights value names (no torch needed), and the profile's
transformers config where transformers is installed."""
from __future__ import annotations

import pytest

from measurement import build as BD


def test_weights_kind(tmp_path):
    assert [BD.weights_kind(w) for w in (None, "", "random")] == ["random"] * 3
    assert BD.weights_kind(str(tmp_path)) == "path"
    assert BD.weights_kind("meta-llama/Llama-3.1-8B") == "hf"
    assert issubclass(BD.WeightsError, ValueError)


def test_profile_config_is_the_catalog_architecture():
    pytest.importorskip("transformers")
    from profiles import load

    llm = load().llm("llama3.1-8b")
    cfg = BD.profile_config("llama3.1-8b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.vocab_size) == (
        llm.hidden_size, llm.num_hidden_layers, llm.num_key_value_heads, llm.vocab_size)
    assert cfg._attn_implementation == "sdpa"
