import copy

import pytest
import yaml

from models.memory import param_counts
from profiles import SchemaError, UnknownProfileError, load
from profiles import schema
from profiles.catalog import DATA_DIR

REQUIRED_GPUS = ["t4", "v100-32g", "a10g", "l4", "a40", "a100-40g-pcie", "a100-80g-sxm", "l40s", "rtx3090",
                 "rtx4090", "rtx4060ti-16g", "h100-pcie", "h100-sxm", "h200", "b200", "mi300x"]
REQUIRED_LLMS = ["llama3.1-8b", "llama3-8b", "llama3.2-1b", "llama3.2-3b", "llama3.1-70b", "llama3-70b",
                 "llama2-7b", "qwen1.5-1.8b", "qwen2.5-7b", "mistral-7b"]


@pytest.fixture(scope="module")
def cat():
    return load()


def test_required_entries_present(cat):
    assert set(REQUIRED_GPUS) <= set(cat.gpus)
    assert set(REQUIRED_LLMS) <= set(cat.llms)
    kinds = {m.kind for m in cat.methods.values()}
    assert kinds == {"precision", "sparsity", "kv"}


@pytest.mark.parametrize("mid", REQUIRED_LLMS)
def test_param_count_matches_published(cat, mid):
    llm = cat.llm(mid)
    computed = param_counts(llm).total / 1e9
    assert computed == pytest.approx(llm.published_params_b, rel=0.02), (mid, computed)


def test_every_gpu_number_is_cited(cat):
    for g in cat.gpus.values():
        for key in ("memory_gb", "mem_bw_gbps", "tflops_dense", "tdp_w") + (("idle_w",) if g.idle_w else ()):
            if key == "tflops_dense" and not any(v is not None for v in g.tflops_dense.values()):
                continue  # no published tensor figure (A10G, RTX 4060 Ti): nothing to cite
            assert g.source(key) != "no source recorded", (g.id, key)
        for price in ("cloud_price", "list_price"):
            p = g.raw.get(price)
            if p and (p.get("usd_per_hour") or p.get("usd")):
                assert p.get("source"), (g.id, price)  # every price is cited
                if price == "cloud_price":  # a rental price is dated (they move), or its source says it is not
                    assert p.get("date") or "undated" in p["source"], (g.id, price)


def test_dense_peaks_are_not_sparse_figures(cat):
    # H100 SXM dense bf16 is 989 TFLOP/s; the with-sparsity figure (1979) must not be stored.
    assert cat.gpu("h100-sxm").peak_tflops("bf16") < 1000
    assert cat.gpu("h200").peak_tflops("fp8") < 2000


def test_unknown_gpu_offers_close_matches(cat):
    with pytest.raises(UnknownProfileError) as e:
        cat.gpu("rtx-4090x")
    assert "rtx4090" in e.value.suggestions


def test_ambiguous_alias_says_what_it_picks(cat):
    r = cat.resolve("gpu", "a100")
    assert r.id in cat.gpus and "ambiguous" in r.note


def test_aliases_case_insensitive_and_hf_ids(cat):
    assert cat.gpu("L4").id == "l4"
    assert cat.llm("meta-llama/Llama-3.1-8B").id == "llama3.1-8b"


def test_schema_rejects_uncited_number():
    doc = yaml.safe_load(open(DATA_DIR / "gpus.yaml"))
    bad = copy.deepcopy(doc)
    bad["gpus"][0]["sources"].pop("mem_bw_gbps", None)
    bad["gpus"][0]["sources"].pop("memory_gb", None)
    with pytest.raises(SchemaError, match="sources"):
        schema.check_catalog(bad, "gpus", schema.GPU_FIELDS, "gpus.yaml")


def test_schema_rejects_wrong_type_and_version():
    doc = yaml.safe_load(open(DATA_DIR / "llms.yaml"))
    bad = copy.deepcopy(doc)
    bad["llms"][0]["num_hidden_layers"] = "32"
    with pytest.raises(SchemaError, match="num_hidden_layers"):
        schema.check_catalog(bad, "llms", schema.LLM_FIELDS, "llms.yaml")
    bad = copy.deepcopy(doc)
    bad["schema_version"] = 99
    with pytest.raises(SchemaError, match="schema_version"):
        schema.check_catalog(bad, "llms", schema.LLM_FIELDS, "llms.yaml")


def test_quality_rows_cite_paper_and_table(cat):
    for r in cat.quality_rows:
        assert r["url"].startswith("http") and r["paper"]


def test_training_tokens_entries_are_checked(tmp_path):
    import shutil

    from profiles import schema
    from profiles.catalog import DATA_DIR, load_training_tokens
    shutil.copytree(DATA_DIR, tmp_path / "d")
    p = tmp_path / "d" / "quality_published.yaml"
    text = p.read_text()
    p.write_text(text.replace("- {family: opt, tokens_t: 0.18,", "- {family: opt, tokens_t: 0.18, tokens_b: 180,", 1))
    with pytest.raises(schema.SchemaError, match=r"training_tokens\[\d+\]: unknown key\(s\) tokens_b"):
        load_training_tokens(tmp_path / "d")
    p.write_text(text.replace("- {family: opt, tokens_t: 0.18,", "- {family: opt, tokens_t: -1,", 1))
    with pytest.raises(schema.SchemaError, match="must be > 0"):
        load_training_tokens(tmp_path / "d")
