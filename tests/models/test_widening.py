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
