"""The engine catalog: schema, citations, and what runs where."""
import pytest

from profiles import SchemaError, load
from profiles.engines import ARCHS, check_engines


@pytest.fixture(scope="module")
def cat():
    return load()


def test_every_engine_method_is_cited_and_known(cat):
    for e in cat.engines.values():
        if e.runs_everything:
            continue
        for mid in e.method_ids():
            assert mid in cat.methods
            entry = e.method_entry(mid)
            assert entry["source"] and set(entry["kernels"]) <= set(ARCHS)


def test_schema_refuses_unknown_method_and_keys(cat):
    doc = {"schema_version": 1, "engines": [dict(cat.engines["vllm"].raw)]}
    doc["engines"][0] = {**doc["engines"][0], "methods": {"no-such-method": {"kernels": {"sm90": "x"}, "source": "s"}}}
    with pytest.raises(SchemaError, match="no-such-method"):
        check_engines(doc, set(cat.methods))
    doc["engines"][0]["methods"] = {"bf16": {"kernels": {"sm90": "x"}, "source": "s", "speed": 3}}
    with pytest.raises(SchemaError, match="unknown keys"):
        check_engines(doc, set(cat.methods))


def test_vllm_runs_int4_on_turing_but_fp8_wants_ampere(cat):
    v = cat.engines["vllm"]
    assert v.kernel("awq-int4", "sm75") and v.kernel("gptq-int4", "sm75") and v.kernel("w8a8", "sm75")
    assert v.kernel("fp8", "sm75") is None and v.kernel("fp8", "sm80") == "marlin-fp8-wo"
    assert v.kernel("fp8", "sm90") == "cutlass-fp8"


def test_unknown_engine_lists_the_engines(cat):
    with pytest.raises(LookupError) as e:
        cat.engine("vllmm")
    for eid in cat.engines:
        assert eid in str(e.value)


def test_one_default_and_one_harness_engine(cat):
    assert cat.default_engine == next(e.id for e in cat.engines.values() if e.get("default"))
    assert cat.engines[cat.harness_engine].runs_everything
    doc = {"schema_version": 1, "engines": [dict(e.raw) for e in cat.engines.values()]}
    doc["engines"][1] = {**doc["engines"][1], "default": True}
    with pytest.raises(SchemaError, match="exactly one engine needs 'default: true'"):
        check_engines(doc, set(cat.methods))


def test_serving_engines_carry_the_cost_model_facts_cited(cat):
    from profiles.engines import COST_MODEL_KEYS
    for e in cat.engines.values():
        if not e.runs_everything:
            assert all(k in e.raw and e.raw["sources"].get(k) for k in COST_MODEL_KEYS), e.id
    doc = {"schema_version": 1, "engines": [dict(e.raw) for e in cat.engines.values()]}
    doc["engines"][0] = {k: v for k, v in doc["engines"][0].items() if k != "max_batch_seqs"}
    with pytest.raises(SchemaError, match="max_batch_seqs"):
        check_engines(doc, set(cat.methods))
    doc["engines"][0] = {**doc["engines"][0], "max_batch_seqs": 8, "sources": {}}
    with pytest.raises(SchemaError, match="need an entry in 'sources'"):
        check_engines(doc, set(cat.methods))


def test_earlier_builds_are_checked(cat):
    doc = {"schema_version": 1, "engines": [dict(e.raw) for e in cat.engines.values()]}
    i = next(j for j, e in enumerate(doc["engines"]) if e.get("earlier_builds"))
    good = doc["engines"][i]["earlier_builds"][0]
    import datetime
    for bad, msg in (({**good, "phase": "decoding"}, "phase must be prefill or decode"),
                     ({**good, "until": datetime.date(2024, 6, 24)}, "until must be a quoted YYYY-MM-DD"),
                     ({**good, "runs_as": "awq-int4"}, "not among the engine's methods"),
                     ({k: v for k, v in good.items() if k != "source"}, "needs until, phase"),
                     ({**good, "kernel": "x"}, "needs until, phase"),
                     ({**good, "tag": "2405"}, "one of runs_as, tag"),  # both
                     ({k: v for k, v in good.items() if k != "runs_as"}, "one of runs_as, tag")):  # neither
        doc["engines"][i] = {**doc["engines"][i], "earlier_builds": [bad]}
        with pytest.raises(SchemaError, match=msg):
            check_engines(doc, set(cat.methods))


def test_kernel_priors_come_from_another_serving_engine(cat):
    assert cat.engines["sglang"].get("kernel_priors_from") == "vllm"
    doc = {"schema_version": 1, "engines": [dict(e.raw) for e in cat.engines.values()]}
    i = next(j for j, e in enumerate(doc["engines"]) if e["id"] == "sglang")
    v = next(j for j, e in enumerate(doc["engines"]) if e["id"] == "vllm")
    for sib in ("sglang", "transformers", "no-such-engine"):
        bad = [dict(e) for e in doc["engines"]]
        bad[i]["kernel_priors_from"] = sib
        with pytest.raises(SchemaError, match="kernel_priors_from must name another serving engine"):
            check_engines({**doc, "engines": bad}, set(cat.methods))
    chained = [dict(e) for e in doc["engines"]]  # the sibling may not take priors itself
    chained[v] = {**chained[v], "kernel_priors_from": "tensorrt-llm",
                  "sources": {**chained[v]["sources"], "kernel_priors_from": "s"}}
    with pytest.raises(SchemaError, match="takes no priors itself"):
        check_engines({**doc, "engines": chained}, set(cat.methods))
    uncited = [dict(e) for e in doc["engines"]]
    uncited[i] = {**uncited[i], "sources": {k: s for k, s in uncited[i]["sources"].items() if k != "kernel_priors_from"}}
    with pytest.raises(SchemaError, match="need an entry in 'sources'"):
        check_engines({**doc, "engines": uncited}, set(cat.methods))
