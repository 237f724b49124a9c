"""models.harness_fit: the harness speed model's measured constants derived by code. The derivation recovers
known constants from rows the analytical model generated with them; a fold's constants never read its held-out
rows; the shipped file is what the code gives on the shipped dataset; predict_speed takes a constants dict
without touching the shipped one."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from models import efficiency as eff
from models import harness_fit as HF
from models import harness_probe as HP
from models.candidate import Candidate, Scenario
from models.speed import predict_speed
from profiles import load

KNOWN = {"eager_host_ms_per_layer": 0.7,
         "eager_host_factor": {**{p: 1.0 for p in eff.precisions()}, "fp8": 3.0, "int8-wo": 1.8, "awq-int4": 1.3,
                               "gptq-int4": 1.3},  # gptq-int4: awq-int4's kernels (the twin prior)
         "eager_host_factor_24": 6.0, "kv_read_fraction": {"compiled": 0.8, "eager": 0.4},
         "kv_dequant_bytes_per_elem": 20.0,
         "kvq_host_ms_per_layer": {"kv-fp8": 0.3, "kv-int8": 0.4, "kv-int4": 0.5, "kv-int2": 0.6},
         # the kernel figures (models/harness_fit_kernels.py); the twins (fp16, gptq-int4) share their method's
         "compiled_step_ms_per_layer": 0.06, "bw_compiled": {"bf16": 0.9, "fp16": 0.9, "fp8": 0.6, "awq-int4": 0.4,
                                                             "gptq-int4": 0.4},
         "layer_ms_compiled": {"fp8": 0.03, "awq-int4": 0.01, "gptq-int4": 0.01},
         "compute": {"bf16": 0.5, "fp16": 0.5, "fp8": 0.3, "int8-wo": 0.35, "bnb-int8": 0.1, "bnb-nf4": 0.45,
                     "awq-int4": 0.05, "gptq-int4": 0.05},
         "sparse24": {"bw_compiled": 0.15, "row_factor": 0.02}, "int4_compiled_row_factor": 0.2,
         "int8wo_compiled_bytes_per_weight_per_row": 8.0}
FUSED = "regional-graph-fused"


def _row(cat, constants, gpu, model, backend, batch, prompt, precision="bf16", sparsity="dense", kv="kv-fp16",
         compile_mode=None):
    c, sc = Candidate(precision, sparsity, kv), Scenario(batch, prompt, 64, backend, 1)
    spd = predict_speed(cat, cat.gpu(gpu), cat.llm(model), c, sc, constants)
    ms, pre = spd.decode_step_ms.value, spd.prefill_ms.value
    return dict(status="ok", gpu=gpu, model=model, precision=precision, sparsity=sparsity, kv=kv, kv_budget=None,
                backend=backend, batch=batch, prompt_len=prompt, gen_len=64, decode_ms_per_token=ms, prefill_ms=pre,
                compile_mode=compile_mode if backend == "compiled" else None)


def _synthetic(constants=KNOWN, kv_rows=True, fp8_rows=True):
    """Rows of the kinds each recipe reads, their decode times from the analytical model with ``constants``."""
    cat = load()
    rows = []
    for model in ("llama3.2-1b", "llama3.2-3b", "qwen2.5-7b"):
        for prompt in (512, 1024):  # host-bound eager bf16 rows, and the methods' batch-1 rows beside them
            rows.append(_row(cat, constants, "h100-sxm", model, "eager", 1, prompt))
            for p in ("int8-wo", "awq-int4") + (("fp8",) if fp8_rows else ()):
                rows.append(_row(cat, constants, "h100-sxm", model, "eager", 1, prompt, p))
        rows.append(_row(cat, constants, "h100-sxm", model, "eager", 1, 512, sparsity="2:4-magnitude"))
    # eager KV read: GPU-bound rows with a large cache
    rows.append(_row(cat, constants, "h200", "llama3.1-8b", "eager", 64, 8192))
    # compiled KV read: the same rows at two prompts
    for model in ("llama3.2-3b", "llama3.1-8b"):
        for batch in (16, 64):
            for prompt in (512, 4096):
                rows.append(_row(cat, constants, "h200", model, "compiled", batch, prompt,
                                 compile_mode="regional-graph-fused"))
    for model in ("llama3.2-3b", "llama3.1-8b"):  # FUSED batch-1 rows of two sizes: bf16, then each fitted method
        for p in ("bf16", "fp8", "awq-int4"):
            rows.append(_row(cat, constants, "h200", model, "compiled", 1, 512, p, compile_mode=FUSED))
    for batch in (1, 16, 64):  # 2:4 FUSED rows below and above 16 rows
        rows.append(_row(cat, constants, "h200", "llama3.1-8b", "compiled", batch, 512, sparsity="2:4-magnitude",
                         compile_mode=FUSED))
    for batch in (8, 32):  # the compiled batch costs of int4 (row factor) and int8-wo (weight re-read)
        for p in ("awq-int4", "int8-wo"):
            rows.append(_row(cat, constants, "h100-sxm", "llama3.1-8b", "compiled", batch, 512, p,
                             compile_mode="regional-graph"))
    for p in ("bf16", "fp8", "int8-wo", "bnb-int8", "bnb-nf4", "awq-int4"):  # long prefills (compute-bound)
        rows.append(_row(cat, constants, "h100-sxm", "llama3.1-8b", "compiled", 2, 8192, p,
                         compile_mode="regional-graph"))
    if kv_rows:  # quantized caches at batch 1 and 8 beside the 16-bit cache's rows
        for batch in (1, 8):
            rows.append(_row(cat, constants, "h200", "llama3.1-8b", "eager", batch, 4096))
            for kv in constants["kvq_host_ms_per_layer"]:
                rows.append(_row(cat, constants, "h200", "llama3.1-8b", "eager", batch, 4096, kv=kv))
    return pd.DataFrame(rows)


def _close(a, b, rel=0.01):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _close(a[k], b[k], rel)
    else:
        assert a == pytest.approx(b, rel=rel, abs=1e-6)


def test_the_derivation_recovers_the_constants_that_generated_the_rows():
    ev: dict = {}
    got = HF.fit_constants(_synthetic(), load(), ev)
    # a precision without eager rows here (w8a8) takes its eager factor from its kernel probe, not from the rows
    probed = [p for p in got["eager_host_factor"] if ev.get(f"eager_host_factor[{p}]", "").startswith(
        "prior: eager kernel probe")]
    assert probed
    fitted = {q: got["eager_host_factor"][q] for q in got["eager_host_factor"]
              if ev.get(f"eager_host_factor[{q}]", "").startswith("batch-1 eager rows")}
    for p in probed:
        assert got["eager_host_factor"][p] == pytest.approx(HP.eager_factor_prior(p, fitted, "bf16")[0], rel=0.01)
    _close(got, {**KNOWN, "eager_host_factor": {**KNOWN["eager_host_factor"],
                                                **{p: got["eager_host_factor"][p] for p in probed}}})
    assert not [k for k, v in ev.items() if v.startswith("prior") and "fp16" not in k and "w8a8" not in k
                and "bnb" not in k and "gptq" not in k], ev
    assert got["eager_host_factor"]["gptq-int4"] == got["eager_host_factor"]["awq-int4"]  # same harness kernels


def test_without_evidence_a_constant_takes_its_stated_prior():
    ev: dict = {}
    got = HF.fit_constants(_synthetic(kv_rows=False, fp8_rows=False), load(), ev)
    fitted = {q: got["eager_host_factor"][q] for q in got["eager_host_factor"]
              if ev.get(f"eager_host_factor[{q}]", "").startswith("batch-1 eager rows")}
    assert ev["eager_host_factor[fp8]"].startswith("prior: eager kernel probe")  # no fp8 row: its probe
    assert got["eager_host_factor"]["fp8"] == pytest.approx(HP.eager_factor_prior("fp8", fitted, "bf16")[0], rel=0.01)
    assert got["eager_host_factor"]["fp8"] > max(fitted.values())  # fp8's eager probe is the slowest issued
    assert got["kv_dequant_bytes_per_elem"] == 0.0 and ev["kv_dequant_bytes_per_elem"] == "prior: 0"
    assert set(got["kvq_host_ms_per_layer"].values()) == {0.0}
    only_int4 = _synthetic()
    only_int4 = only_int4[only_int4["kv"].isin(["kv-fp16", "kv-int4"])]
    got = HF.fit_constants(only_int4, load(), ev)
    assert got["kvq_host_ms_per_layer"]["kv-fp8"] == got["kvq_host_ms_per_layer"]["kv-int4"] == pytest.approx(0.5)
    no_bf16 = _synthetic()
    no_bf16 = no_bf16[no_bf16["precision"] != "bf16"]
    ev = {}
    got = HF.fit_constants(no_bf16, load(), ev)
    eager = set(no_bf16.loc[(no_bf16["backend"] == "eager") & (no_bf16["sparsity"] == "dense")
                            & (no_bf16["kv"] == "kv-fp16"), "precision"])
    near = HP.eager_nearest(eager, "bf16")  # the method whose eager kernel probe is nearest bf16's
    assert near in eager and ev["eager_host_ms_per_layer"].startswith(f"prior: {near}'s eager rows")
    assert near != max(eager, key=lambda q: got["eager_host_factor"][q])  # not the slowest-host method
    assert got["kv_read_fraction"]["eager"] == got["kv_read_fraction"]["compiled"]  # the eager rows are bf16


def test_a_fold_never_reads_its_held_out_rows():
    from measurement.dataset import load_dataset
    from models.fitted import design, refit_analytical, usable_rows

    cat = load()
    df = usable_rows(load_dataset())
    _, _, _, keep, _ = design(df, cat)
    sub = df.loc[keep]
    # llama3.2-1b has eager bf16 rows (the host median reads them); llama3.1-8b every FUSED, 2:4 and compiled
    # int8-wo row (the kernel figures read them)
    for model in ("llama3.1-8b", "llama3.2-1b"):
        held = (sub["model"] == model).to_numpy()
        assert held.any()
        X, A = refit_analytical(sub, cat)(~held)
        moved = sub.copy()
        moved.loc[held, "decode_ms_per_token"] *= 3.0
        moved.loc[held, "prefill_ms"] *= 0.5
        X2, A2 = refit_analytical(moved, cat)(~held)
        np.testing.assert_array_equal(A, A2)
        np.testing.assert_array_equal(X, X2)
    # the same perturbation on training rows moves the fold's constants (the test can fail)
    X3, A3 = refit_analytical(moved, cat)(np.ones(len(sub), bool))
    assert not np.allclose(A[:, 0], A3[:, 0])


def test_the_shipped_constants_are_what_the_code_gives_on_the_shipped_dataset():
    doc = HF.shipped_document()
    shipped = json.loads(eff.FITTED_PATH.read_text())
    for k in ("constants", "evidence", "rows", "snapshot", "priors"):
        assert doc[k] == shipped[k], k
    assert shipped["provenance"].startswith(f"fitted by models/harness_fit.py on measurement/data/measurements.csv, "
                                            f"{shipped['rows']} rows, ")
    assert eff.CONSTANTS == shipped["constants"]


def test_predict_speed_takes_constants_without_touching_the_shipped_ones():
    cat = load()
    before = copy.deepcopy(eff.CONSTANTS)
    gpu, llm = cat.gpu("h200"), cat.llm("llama3.1-8b")
    c, sc = Candidate("bf16"), Scenario(1, 512, 64, "eager")
    base = predict_speed(cat, gpu, llm, c, sc).decode_step_ms.value
    assert predict_speed(cat, gpu, llm, c, sc, eff.CONSTANTS).decode_step_ms.value == base
    other = {**eff.CONSTANTS, "eager_host_ms_per_layer": 2 * eff.CONSTANTS["eager_host_ms_per_layer"]}
    assert predict_speed(cat, gpu, llm, c, sc, other).decode_step_ms.value == pytest.approx(2 * base, rel=0.01)
    assert predict_speed(cat, gpu, llm, c, sc).decode_step_ms.value == base
    assert eff.CONSTANTS == before


def test_a_kernel_figure_without_evidence_takes_its_stated_prior():
    rows = _synthetic()
    ev: dict = {}
    got = HF.fit_constants(rows[rows["compile_mode"] != FUSED], load(), ev)  # no FUSED row at all
    assert got["bw_compiled"]["bf16"] == eff.kernel("bf16")["prior"]["bw.compiled"]
    assert ev["bw_compiled[bf16]"].startswith("prior")
    # no 2:4 row and no fitted method: the 2:4 kernel probe, through bf16's prior fraction
    through = HP.bw_prior("bf16", {"bf16": (got["bw_compiled"]["bf16"], 0.0)}, sparsity=HP.sparse24_sparsity(),
                          rows=16)[0]
    assert got["sparse24"] == {"bw_compiled": pytest.approx(through, rel=0.01), "row_factor": 0.0}
    assert through != eff.SPARSE_24["probe_bw_compiled"]
    # the unmerged rows stand in for the step overhead at the prior fraction (none at batch 1 of bf16 here)
    assert ev["compiled_step_ms_per_layer"] == "prior: 0"
    no_fp8 = rows[rows["precision"] != "fp8"]
    ev = {}
    got = HF.fit_constants(no_fp8, load(), ev)
    # fp8's figures come from its kernel probes, transferred through the methods the rows did fit
    fitted = {q: (got["bw_compiled"][q], got["layer_ms_compiled"].get(q, 0.0)) for q in ("bf16", "awq-int4")}
    assert got["bw_compiled"]["fp8"] == pytest.approx(HP.bw_prior("fp8", fitted)[0], rel=0.01)
    assert ev["bw_compiled[fp8]"].startswith("prior: kernel probe")
    assert got["layer_ms_compiled"]["fp8"] == 0.0 and ev["layer_ms_compiled[fp8]"] == "prior: 0"
    assert ev["compute[fp8]"].startswith("prior: kernel probe")
    fitted_c = {q: got["compute"][q] for q in ("bf16", "int8-wo", "bnb-int8", "bnb-nf4", "awq-int4")
                if not ev[f"compute[{q}]"].startswith("prior")}
    assert got["compute"]["fp8"] == pytest.approx(HP.compute_prior("fp8", fitted_c)[0], rel=0.01)
    assert got["int8wo_compiled_bytes_per_weight_per_row"] == pytest.approx(8.0, rel=0.01)
