"""measurement.quality.plan: the campaign's configuration list and the training-candidate parser."""
from __future__ import annotations

import pytest

from measurement.quality import plan as P


def test_plan_order_and_contents():
    cfgs = P.plan()
    assert cfgs[0] == {"precision": "bf16", "sparsity": "dense", "kv": "kv-fp16", "kv_budget": None, "metric": "ppl"}
    # weight methods first (most important), then the KV policies, then combinations
    assert [c["precision"] for c in cfgs[1:1 + len(P.PRECISIONS)]] == P.PRECISIONS
    n = (1 + len(P.PRECISIONS) + len(P.SPARSITIES) + 1 + len(P.KV_QUANT) + len(P.KV_EVICT) * len(P.KV_BUDGETS)
         + len(P.KV_QUANT) + len(P.COMBOS) + len(P.KV_COMBOS))
    assert len(cfgs) == n
    evict = [c for c in cfgs if c["kv"] in P.KV_EVICT and c["precision"] == "bf16"]
    assert {(c["kv"], c["kv_budget"]) for c in evict} == {(k, b) for k in P.KV_EVICT for b in P.KV_BUDGETS}
    assert all(c["metric"] == "ppl_decode" for c in evict)
    assert [c["kv"] for c in cfgs if c["metric"] == "ppl_decode_res0"] == P.KV_QUANT
    assert cfgs[-1] == {"precision": "awq-int4", "sparsity": "dense", "kv": "snapkv", "kv_budget": 128,
                        "metric": "ppl_decode"}
    # every configuration is measured once
    assert len({tuple(c.values()) for c in cfgs}) == len(cfgs)
    assert len(P.plan(kv_budgets=[32])) == n - len(P.KV_EVICT) * (len(P.KV_BUDGETS) - 1)


@pytest.mark.parametrize("spec,want", [("0.1:450,0.3:1600", [(0.1, 450), (0.3, 1600)]), ("0.2", [(0.2, 99)]),
                                       (" 0.2:5 , ,0.4", [(0.2, 5), (0.4, 99)]), ("", [(0.1, 99)]),
                                       (None, [(0.1, 99)])])
def test_parse_candidates(spec, want):
    assert P.parse_candidates(spec, 99) == want
    assert len(P.parse_candidates(P.TRAIN_CANDIDATES, 1)) == 6


def test_parse_candidates_rejects_garbage():
    with pytest.raises(ValueError):
        P.parse_candidates("x:10", 5)


def test_plan_yaml_names_catalog_methods():
    """plan.yaml names catalog method ids (drop-N: drop-layers), or precision variants of catalog precisions."""
    import re

    from profiles import load

    cat = load()
    assert P.base() == {"precision": "bf16", "sparsity": "dense", "kv": "kv-fp16"}
    assert P.is_base({**P.base(), "metric": "ppl_decode"}) and not P.is_base({**P.base(), "kv": "snapkv"})
    for name, v in P.VARIANTS.items():
        assert name not in cat.methods and cat.methods[v["method"]].kind == "precision", name
    names = {(kind, x) for c in P.plan() for kind, x in (("precision", c["precision"]), ("sparsity", c["sparsity"]),
                                                           ("kv", c["kv"]))}
    for kind, x in sorted(names):
        if x in P.VARIANTS or (kind == "sparsity" and re.fullmatch(r"drop-\d+", x)):
            continue
        assert cat.methods[x].kind == kind, x
    assert all(cat.methods[p].kind == "precision" for p in P.GPTQ_FALLBACK)
    assert P.variant_docs() == ["rtn-int4 = apply_precision('awq-int4') without calibration (round-to-nearest int4 "
                                "g128, same torchao kernels)"]
