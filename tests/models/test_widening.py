"""Interval widening of the fitted cost model: the domain it records and the reasons it gives; the
cross-validation applies the same rules to each fold's own training domain."""
import numpy as np
import pytest

from models.candidate import Candidate, Scenario
from models.correction import FEATURES, FittedCostModel, domain_of


@pytest.fixture(scope="module")
def cat():
    from profiles import load

    return load()


def _model(rows):
    return FittedCostModel({"features": list(FEATURES), "targets": {}, "domain": domain_of(rows)})


def test_reasons_follow_the_domain(cat):
    # (gpu id, cc major, params_b, precision, sparsity, backend, model id)
    rows = [("h200", 9, 8.0, "bf16", "dense", "compiled", "llama3.1-8b"),
            ("h200", 9, 1.2, "bf16", "dense", "compiled", "llama3.2-1b"),
            ("h200", 9, 8.0, "awq-int4", "dense", "compiled", "llama3.1-8b")]
    m = _model(rows)
    h200, h100, l4 = cat.gpu("h200"), cat.gpu("h100-sxm"), cat.gpu("l4")
    llm = cat.llm("llama3.1-8b")
    sc = Scenario(1, 512, 64)
    assert m.far_reasons(h200, llm, Candidate("bf16"), sc) == []
    kinds = lambda g, c, s=sc, l=llm: [k for k, _ in m.far_reasons(g, l, c, s)]  # noqa: E731
    assert kinds(h200, Candidate("awq-int4")) == ["method_arch"]          # one model only
    assert kinds(h200, Candidate("fp8")) == ["method_arch"]               # never measured
    assert kinds(h200, Candidate("bf16", sparsity="2:4-magnitude")) == ["method_arch"]
    assert kinds(h100, Candidate("bf16")) == ["gpu"]
    assert "generation" in kinds(l4, Candidate("bf16"))
    assert kinds(h200, Candidate("bf16"), l=cat.llm("llama3.1-70b")) == ["size"]


def test_cross_validation_widens_like_the_product():
    from models.fitted import _widen

    meta = [("h200", 9, 8.0, "bf16", "dense", "compiled", "a"), ("h200", 9, 1.0, "bf16", "dense", "compiled", "b"),
            ("h200", 9, 8.0, "fp8", "dense", "compiled", "a"), ("h200", 9, 3.0, "bf16", "dense", "compiled", "c")]
    tr = np.array([True, True, False, False])
    te = np.array([False, False, True, True])
    # fp8 was not in the fold's training rows; bf16 was, on two models
    assert _widen(meta, tr, te).tolist() == [1.5, 1.0]
    # bf16 measured on one model only in this fold
    assert _widen(meta, np.array([True, False, False, False]), np.array([False, False, False, True])).tolist() == [1.5]


def test_a_sparsity_or_kv_policy_measured_on_one_model_widens(cat):
    # (gpu id, cc major, params_b, precision, sparsity, backend, model id, kv)
    rows = [("h200", 9, 8.0, "bf16", "dense", "compiled", "llama3.1-8b", "kv-fp16"),
            ("h200", 9, 1.2, "bf16", "dense", "compiled", "llama3.2-1b", "kv-fp16"),
            ("h200", 9, 8.0, "bf16", "2:4-magnitude", "compiled", "llama3.1-8b", "kv-fp16"),
            ("h200", 9, 8.0, "bf16", "dense", "eager", "llama3.1-8b", "kv-int4"),
            ("h200", 9, 1.2, "bf16", "dense", "eager", "llama3.2-1b", "kv-fp16"),
            ("h200", 9, 1.2, "bf16", "dense", "eager", "llama3.1-8b", "kv-fp16")]
    m = _model(rows)
    h200, llm = cat.gpu("h200"), cat.llm("llama3.2-3b")
    reasons = lambda c, backend="compiled": m.far_reasons(h200, llm, c, Scenario(1, 512, 64, backend))  # noqa: E731
    assert reasons(Candidate("bf16")) == []
    assert [r for _, r in reasons(Candidate("bf16", sparsity="2:4-magnitude"))] == [
        "2:4-magnitude with the compiled backend on sm9x was measured on one model only"]
    assert [r for _, r in reasons(Candidate("bf16", kv="kv-int4"), "eager")] == [
        "kv-int4 with the eager backend on sm9x was measured on one model only"]
    assert [k for k, _ in reasons(Candidate("bf16", kv="kv-int8"), "eager")] == ["method_arch"]  # never measured
    # both at once: two reasons, two widenings
    assert [k for k, _ in reasons(Candidate("bf16", sparsity="2:4-magnitude", kv="kv-int4"))] == ["method_arch"] * 2


def test_an_unmeasured_architecture_is_one_method_reason_not_two(cat):
    # the dense rows' own check says nothing a precision never measured there has not said already
    m = _model([("h200", 9, 8.0, "bf16", "dense", "compiled", "llama3.1-8b", "kv-fp16"),
                ("h200", 9, 1.2, "bf16", "dense", "compiled", "llama3.2-1b", "kv-fp16")])
    kinds = [k for k, _ in m.far_reasons(cat.gpu("l4"), cat.llm("llama3.1-8b"), Candidate("bf16"), Scenario(1, 512, 64))]
    assert kinds == ["generation", "method_arch"]
