"""models.engine_fit's shipping path: fit_all on one engine's published rows (the JSON the product loads:
parameters, interval quantiles, domain, sources, the rows' snapshot hash, skip reasons), an engine without
rows falling back to its priors, save / load_params round trip and the priors when nothing was fitted, and
leave-source-out residuals in folds."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from measurement.engine_rows import load_engine_rows
from models import engine_fit as ef
from models import engine_speed as es
from profiles import load


@pytest.fixture(scope="module")
def cat():
    return load()


@pytest.fixture(scope="module")
def rows():
    return load_engine_rows()


def test_fit_all_one_engine_and_round_trip(cat, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_FIT_NFEV", "5")  # the structure is what is tested here, not the optimum
    sub = rows[rows["engine"] == "sglang"]
    d = ef.design(rows, "sglang", cat)
    doc = ef.fit_all(sub, cat, engines=("sglang", "vllm"))  # no vLLM rows in this frame
    assert doc["schema_version"] == 1 and set(doc["engines"]) == {"sglang", "vllm"}
    e = doc["engines"]["sglang"]
    assert e["rows"] == len(d) > 0 and e["sources"] == sorted(set(d.source)) and len(e["sources"]) > 1
    assert e["skipped"] == d.skipped and sum(d.skipped.values()) + len(d) == len(sub)
    assert e["snapshot"] == hashlib.sha256(sub.to_csv(index=False).encode()).hexdigest()[:12]
    assert e["gpus"] == sorted(set(d.gpu)) and e["measured_gpus"] == sorted(set(d.gpu[d.kind == "measured"]))
    assert e["domain"] == {k: sorted({a for kk, a in zip(d.kernel, d.arch) if kk == k}) for k in set(d.kernel)}
    assert e["kernel_gpus"] == {k: sorted({g for kk, g in zip(d.kernel, d.gpu) if kk == k}) for k in set(d.kernel)}
    assert set(e["q90"]) >= {"all", "decode", "prefill", "throughput"} and all(
        v > 0 for v in e["q90"].values() if isinstance(v, float))
    assert set(e["params"]["kernels"]) == set(d.kernel) and all(p in e["params"] for p in es.ENGINE_PARAMS)
    # an engine with no rows: its priors, the default interval, nothing in its domain
    none = doc["engines"]["vllm"]
    assert none["rows"] == 0 and none["sources"] == [] and none["domain"] == {} and none["q90"]["all"] == 0.7
    assert all(none["params"][p] == pytest.approx(es.PARAM_PRIORS[p][0]) for p in es.ENGINE_PARAMS)

    path = ef.save(doc, tmp_path / "engine_params.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc))
    assert ef.load_params(path)["engines"]["sglang"]["snapshot"] == e["snapshot"]
    assert ef.load_params(path) is ef.load_params(path)  # read once
    assert ef.load_params(tmp_path / "missing.json") == {"schema_version": 1, "engines": {}}


def test_leave_sources_out_in_folds(cat, rows, monkeypatch):
    monkeypatch.setenv("ADVISOR_FIT_NFEV", "5")
    d = ef.design(rows, "sglang", cat)
    one = ef.loso_log_residuals(d.take(d.source == d.source[0]))
    assert np.isnan(one).all()  # one source: nothing to hold it out against
    res = ef.loso_log_residuals(d, folds=2)
    assert res.shape == (len(d),) and np.isfinite(res).all()
    same, kinds = ef.loso(d, folds=2)
    assert np.array_equal(same, res)
    # a held-out row is novel exactly when the other fold has no row of its kernel on its GPU
    srcs = sorted(set(d.source))
    for i in range(len(d)):
        other = ~np.isin(d.source, srcs[srcs.index(d.source[i]) % 2::2])
        hit = np.any(other & (d.kernel == d.kernel[i]) & (d.gpu == d.gpu[i]))
        assert kinds[i] == (d.kind[i] if hit or d.kind[i] == "measured" else "novel")
    pred = ef.predict_design(ef.fit_params(d.take(d.source != d.source[0])), d.take(d.source == d.source[0]))
    assert np.all(pred > 0)
    by_model = ef.loso_log_residuals(d, by="model")
    models = set(d.model)
    assert len(models) > 1 and np.isfinite(by_model).all()


def test_a_sibling_engines_fit_is_the_prior_and_never_sees_the_held_out_source(cat, rows, monkeypatch):
    monkeypatch.setenv("ADVISOR_FIT_NFEV", "20")
    assert ef.sibling_of(cat, "sglang") == "vllm" and ef.sibling_of(cat, "vllm") is None
    sib = ef.design(rows, "vllm", cat)
    d = ef.design(rows, "sglang", cat)
    one = d.take(d.source == "accelmark-sglang-a100-sxm4-40gb")  # 16-bit rows on one GPU: a weak pull of its own
    shared = ef.sibling_prior(sib)
    own, pulled = ef.fit_params(one), ef.fit_params(one, shared=shared)
    k = "cublas-16"
    for p in ("e_mm", "e_pre"):  # parameters these rows barely inform move to the sibling's values
        assert abs(np.log(pulled["kernels"][k][p] / shared["kernels"][k][p])) < abs(np.log(own["kernels"][k][p]
                                                                                          / shared["kernels"][k][p]))
    assert pulled["host_ms"] != pytest.approx(shared["host_ms"])  # fixed costs stay the engine's own
    # a held-out source leaves the sibling's rows too
    both = sorted(set(sib.source) & set(d.source))
    assert both
    without = ef.sibling_prior(sib, both[:1])
    alone = ef.fit_params(sib.take(sib.source != both[0]))
    assert without["kernels"][k]["e_bw"] == pytest.approx(alone["kernels"][k]["e_bw"])
    assert ef.sibling_prior(None, both[:1]) is None
