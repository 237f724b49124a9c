"""measurement/kernel_probe.py's bookkeeping (the timing itself needs a GPU): what is left to probe, and resuming."""
from __future__ import annotations

import json

from measurement import kernel_probe as KP

PROV = {"gpu_name": "NVIDIA H200"}


def test_todo_skips_held_rows_and_compiled_rows_the_backend_refuses(tmp_path):
    f = tmp_path / "kernel_probe.jsonl"
    held = {**PROV, "model": "llama3.1-8b", "precision": "bf16", "sparsity": "dense", "mode": "eager", "rows": 2048}
    f.write_text(json.dumps(held) + "\n")
    done = KP._done(f)
    todo = KP._todo(done, PROV, "llama3.1-8b", "bf16", "dense")
    assert ("eager", 2048) not in todo and ("eager", 1) in todo and ("graph", 1) in todo
    assert todo[0][0] == "eager"  # eager first: a failed graph capture ends the process
    w8 = KP._todo(set(), PROV, "llama3.1-8b", "w8a8", "dense")
    assert ("graph", 1) not in w8 and ("graph", 16) not in w8 and ("graph", 64) in w8  # torch._int_mm needs > 16 rows
    assert KP._done(tmp_path / "missing.jsonl") == set()


def test_the_plan_names_catalog_models_and_harness_methods():
    from measurement.precision import PRECISIONS
    from profiles import load

    cat = load()
    for model, methods in KP.PLAN:
        assert model in cat.llms
        for p, s in methods:
            assert p in PRECISIONS and s in cat.methods


def test_the_probed_layer_is_built_as_the_harness_builds_its_models():
    import pytest

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    model, lins = KP._layer("llama3.2-1b", "bf16", "dense", device="cpu")
    assert model.config.num_hidden_layers == 1 and len(lins) == 7  # q, k, v, o, gate, up, down
    assert all(lin.weight.dtype == torch.bfloat16 for lin in lins)
