"""models/harness_probe.py: the kernel probes' figures and the priors they give a fold without rows of a method."""
from __future__ import annotations

import json

import pytest

from models import harness_probe as HP

PROV = {"gpu_name": "NVIDIA H200", "torch": "t", "torchao": "a", "bitsandbytes": "b", "date_utc": "2026-12-01",
        "git_commit": "abc", "weights": "random"}


def _row(precision, mode, rows, us, params=1e8, model="m1", how=HP.GRAPH_HOW):
    return {**PROV, "model": model, "precision": precision, "sparsity": "dense", "mode": mode, "rows": rows,
            "how": how if mode == "graph" else "eager", "us": us, "linear_params": params, "flops": 2.0 * rows * params}


@pytest.fixture
def fake_rows(monkeypatch):
    def use(rows):
        monkeypatch.setattr(HP, "probe_rows", lambda path=None: rows)
        HP.probe_fractions.cache_clear()
    yield use
    HP.probe_fractions.cache_clear()


def test_every_shipped_probe_row_sits_above_its_datasheet_roofline_and_carries_provenance():
    rows = HP.probe_rows()
    assert len(rows) >= 100
    for r in rows:
        assert r["us"] >= HP.roofline_us(r), r
        assert r["weights"] == "random" and r["git_commit"] and r["date_utc"] and r["torch"], r
        assert HP.gpu_of(r) == "h200"


def test_scaling_every_fitted_fraction_scales_a_transferred_fraction_alike():
    fitted = {"bf16": (0.9, 0.0), "awq-int4": (0.45, 0.0)}
    a = HP.bw_prior("fp8", fitted)[0]
    b = HP.bw_prior("fp8", {q: (f * 1.5, lay) for q, (f, lay) in fitted.items()})[0]
    assert b == pytest.approx(1.5 * a, rel=1e-9)
    assert HP.bw_prior("fp8", {}) is None and HP.bw_prior("gptq-int4", fitted) is None  # no probe of gptq


def test_compute_prior_adds_the_fitted_precisions_extra_time_per_flop(fake_rows):
    fake_rows([_row("bf16", "eager", 8192, 1000.0), _row("fp8", "eager", 8192, 800.0),
               _row("awq-int4", "eager", 8192, 20000.0)])
    pf = HP.probe_fractions()["compute"]
    # fitted at their probe fractions: nothing beyond the probes, the prior is the probe itself
    assert HP.compute_prior("awq-int4", {"bf16": pf["bf16"], "fp8": pf["fp8"]})[0] == pytest.approx(pf["awq-int4"])
    # fitted slower than their probes: the held-out method is slower than its probe too, by the same time per FLOP
    got = HP.compute_prior("awq-int4", {"bf16": pf["bf16"] / 2})[0]
    assert got < pf["awq-int4"]
    from models.roofline import compute_dtype, peak_flops
    from profiles import load
    gpu = load().gpus["h200"]
    pk = peak_flops(gpu, compute_dtype("bf16", gpu))
    extra = 1 / (pf["bf16"] / 2 * pk) - 1 / (pf["bf16"] * pk)
    assert 1 / (got * pk) == pytest.approx(1 / (pf["awq-int4"] * pk) + extra)


def test_batch_cost_priors_read_the_probes_growth_with_rows(fake_rows):
    fake_rows([_row("awq-int4", "graph", 1, 100.0), _row("awq-int4", "graph", 16, 100.0 * (1 + 0.2 * 15)),
               _row("int8-wo", "graph", 1, 50.0, params=2e8), _row("int8-wo", "graph", 16, 50.0 + 3000.0, params=2e8),
               _row("int8-wo", "graph", 64, 9999.0, params=2e8, how="compiled, no graph (capture failed)")])
    assert HP.row_factor_prior()[0] == pytest.approx(0.2)
    bw = HP._copy_bw(_row("int8-wo", "graph", 16, 1.0))
    assert HP.reread_prior()[0] == pytest.approx(3000e-6 * bw / (2e8 * 16))  # the uncaptured row is not read
    fake_rows([])
    assert HP.row_factor_prior() is None and HP.reread_prior() is None


def test_a_broken_probe_file_names_its_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(_row("bf16", "graph", 1, 1.0)) + "\n{broken\n")
    with pytest.raises(ValueError, match="line 2"):
        HP.probe_rows(f)


def test_eager_nearest_picks_the_method_whose_eager_probe_is_closest(fake_rows):
    fake_rows([_row("bf16", "eager", 1, 200.0), _row("awq-int4", "eager", 1, 500.0),
               _row("fp8", "eager", 1, 4000.0), _row("bnb-nf4", "eager", 1, 300.0, model="m2")])
    assert HP.eager_nearest({"awq-int4", "fp8"}, "bf16") == "awq-int4"
    assert HP.eager_nearest({"bnb-nf4"}, "bf16") is None  # probed on another model only
    fake_rows([_row("bf16", "eager", 1, 200.0), _row("awq-int4", "eager", 1, 500.0), _row("fp8", "eager", 1, 90.0)])
    assert HP.eager_nearest({"awq-int4", "fp8"}, "bf16") == "fp8"  # nearest on a log scale: 2.2x beats 2.5x


def test_a_sparse_probe_transfers_through_the_dense_fit_of_its_own_precision():
    fitted = {"bf16": (1.0, 0.0)}
    assert HP.bw_prior("bf16", fitted) is None  # a method never transfers through itself
    sp = HP.sparse24_sparsity()
    assert sp is not None and HP.bw_prior("bf16", fitted, sparsity=sp, rows=16) is not None  # its dense kernels do


def test_eager_factor_prior_scales_the_probe_by_the_fitted_methods_share(fake_rows):
    fake_rows([_row("bf16", "eager", 1, 100.0), _row("awq-int4", "eager", 1, 300.0),
               _row("fp8", "eager", 1, 1100.0), _row("int8-wo", "eager", 1, 500.0)])
    # awq: (1.4 - 1) / (3 - 1) = 0.2, int8-wo: (1.8 - 1) / (5 - 1) = 0.2 -> fp8: 1 + 0.2 x (11 - 1) = 3.0
    got, ev = HP.eager_factor_prior("fp8", {"awq-int4": 1.4, "int8-wo": 1.8}, "bf16")
    assert got == pytest.approx(3.0) and "0.20" in ev
    assert HP.eager_factor_prior("fp8", {}, "bf16") is None
    assert HP.eager_factor_prior("bnb-nf4", {"awq-int4": 1.4}, "bf16") is None  # never probed
