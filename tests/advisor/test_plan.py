import json

import pytest
from click.testing import CliRunner

from advisor.cli import main
from advisor.engine import RequestError
from advisor.plan import PlanRequest, compare, plan


def test_plan_meets_targets_and_scales_with_load():
    req = PlanRequest("llama3.1-8b", qps=20, prompt_len=1024, gen_len=256, ttft_p95_s=1.0, tpot_p95_s=0.05,
                      gpus=("l4", "a100-80g", "h100-sxm"))
    plans = plan(req)
    assert {p.gpu for p in plans} == {"l4", "a100-80g-sxm", "h100-sxm"}
    for p in plans:
        assert p.best is not None
        assert p.best.ttft_p95_s <= 1.0 and p.best.tpot_s <= 0.05
        assert p.best.quality_loss <= 0.02
        assert p.best.gpus == p.best.replicas * p.best.tp
    more = plan(PlanRequest("llama3.1-8b", qps=200, gpus=("h100-sxm",)))[0].best
    assert more.gpus > [p for p in plans if p.gpu == "h100-sxm"][0].best.gpus


def test_plan_uses_tensor_parallelism_when_one_gpu_is_too_small():
    p = plan(PlanRequest("llama3.1-70b", qps=1, gpus=("h100-sxm",), max_quality_loss=None, engine="transformers"))[0]
    assert p.best is not None and p.best.tp >= 2 and "nvlink" in p.best.interconnect.lower()


def test_plan_infeasible_says_why():
    p = plan(PlanRequest("llama3.1-70b", qps=1, tpot_p95_s=0.001, gpus=("t4",)))[0]
    assert p.best is None and p.blocked


def test_plan_validates_input():
    with pytest.raises(RequestError):
        plan(PlanRequest("llama3.1-8b", qps=-1))


def test_compare_ranks_by_cost_and_gives_payback():
    rows = compare("llama3.1-8b", ("l4", "h100-sxm", "rtx4090"), 0.02)
    priced = [r for r in rows if r.usd_per_mtok is not None]
    for backed in (True, False):  # by cost among the GPUs with rows, then among those without
        group = [r.usd_per_mtok for r in priced if r.backed is backed]
        assert group == sorted(group)
    r4090 = [r for r in rows if r.gpu == "rtx4090"][0]
    assert r4090.payback_months and r4090.payback_months > 0 and r4090.list_price_source
    for r in priced:
        assert r.quality_loss <= 0.02


def test_plan_and_compare_cli_json():
    run = CliRunner().invoke
    r = run(main, ["plan", "--model", "llama3.1-8b", "--qps", "20", "--ttft-p95", "1s", "--tpot-p95", "50ms",
                   "--gpus", "h100-sxm", "--grid-gco2-per-kwh", "400", "--json"])
    assert r.exit_code == 0, r.output
    best = json.loads(r.stdout)["plans"][0]["best"]
    assert best["co2_kg_per_month"] == pytest.approx(best["kwh_per_month"] * 0.4)
    r = run(main, ["plan", "--model", "llama3.1-8b", "--qps", "20", "--ttft-p95", "soon"])
    assert r.exit_code == 2 and "duration" in r.output
    r = run(main, ["compare", "--model", "llama3.1-8b", "--gpus", "l4,t4", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 2
    r = run(main, ["compare", "--model", "llama3.1-8b", "--gpus", "l5"])
    assert r.exit_code == 2 and "l4" in r.stderr


def test_compare_never_ranks_an_unbacked_gpu_above_a_backed_one():
    from advisor.plan import compare
    rows = [r for r in compare("llama3.1-8b", gpus=("l4", "h100-sxm", "a10", "h200"), batch=8) if r.candidate]
    flags = [r.backed for r in rows if r.usd_per_mtok is not None]
    assert any(flags) and flags == sorted(flags, reverse=True)


def test_compare_searches_the_number_of_gpus():
    """A 70B does not fit one L4: compare answers with the fewest L4s that hold it (issue 15)."""
    from advisor.plan import compare
    r = compare("llama3.1-70b", gpus=("l4",), batch=8)[0]
    assert r.candidate and r.num_gpus > 1
    one = compare("llama3.1-8b", gpus=("l4",), batch=8)[0]
    assert one.num_gpus == 1


def test_a_bare_duration_is_seconds_and_says_so():
    r = CliRunner().invoke(main, ["plan", "--model", "llama3.1-8b", "--qps", "1", "--gpus", "l4", "--tpot-p95", "50"])
    assert "--tpot-p95 50 read as 50 s (write 50ms for milliseconds)" in r.output


def test_compare_takes_the_largest_batch_within_the_tpot_bound():
    """compare searches the batch: the most tokens per second a GPU serves with each user's time per
    token within --max-tpot; a tighter bound never picks a larger batch (issue 15)."""
    loose = compare("llama3.1-8b", gpus=("rtx4090", "h100-sxm"), batch=64, max_tpot_s=0.2)
    tight = compare("llama3.1-8b", gpus=("rtx4090", "h100-sxm"), batch=64, max_tpot_s=0.02)
    by = {r.gpu: r for r in tight}
    for r in loose:
        assert r.candidate and r.tpot_ms <= 200
        t = by[r.gpu]
        assert t.candidate is None or (t.tpot_ms <= 20 and t.batch <= r.batch)
    assert any(r.batch > 1 for r in loose)


def test_compare_tpot_option_is_checked():
    r = CliRunner().invoke(main, ["compare", "--model", "llama3.1-8b", "--gpus", "l4", "--max-tpot", "0s"])
    assert r.exit_code == 2 and "--max-tpot" in r.output
    r = CliRunner().invoke(main, ["compare", "--model", "llama3.1-8b", "--gpus", "l4", "--max-tpot", "none", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["batch"] >= 1


def test_compare_refuses_an_absurd_batch_at_once():
    """`compare --batch 1e23` ran for 62 s before it was bounded (issue 15)."""
    for b in ("1e23", "100000", "0"):
        r = CliRunner().invoke(main, ["compare", "--model", "llama3.1-8b", "--gpus", "l4", "--batch", b])
        assert r.exit_code == 2 and "--batch" in r.output


def test_a_link_the_catalog_lacks_is_said_not_shown_as_none():
    """The A10G profile has no GPU-to-GPU figure: a plan over several of them names the assumption."""
    p = plan(PlanRequest("llama3.1-8b", qps=5, gpus=("a10g",)))[0].best
    assert p is not None and "None" not in p.interconnect
    if p.tp > 1:
        assert "assumed" in p.interconnect


def test_plan_and_compare_gate_the_accuracy_drop_too():
    """--max-accuracy-drop bounds plan's and compare's candidates as it does recommend's (issue 11)."""
    from models.candidate import Candidate
    from models.quality_served import served
    from profiles import load
    cat = load()
    q = served(cat)
    for bound in (0.3, 5.0):
        p = plan(PlanRequest("llama3.1-8b", qps=2, gpus=("l4",), max_accuracy_drop=bound))[0].best
        assert p is not None
        prec, sp, kv = p.candidate.split(" + ")
        acc = q.predict(cat.llm("llama3.1-8b"), Candidate(prec, sp, kv), "accuracy_drop")[0]
        assert acc is not None and acc.value <= bound
    r = compare("llama3.1-8b", gpus=("l4",), batch=8, max_accuracy_drop=0.3)[0]
    assert r.candidate is not None
    with pytest.raises(RequestError):
        plan(PlanRequest("llama3.1-8b", qps=2, gpus=("l4",), max_accuracy_drop=-1))


def test_plan_and_compare_name_the_harness_cost_model_only_when_an_answer_used_it():
    """A vLLM answer comes from the vLLM cost model: no note about the harness's fitted model on stderr (it said so
    for every engine before); the transformers engine's answers do carry it."""
    run = CliRunner().invoke
    for cmd in (["compare", "--model", "llama3.1-8b", "--gpus", "l4"],
                ["plan", "--model", "llama3.1-8b", "--qps", "2", "--gpus", "l4"]):
        r = run(main, cmd + ["--json"])
        assert r.exit_code == 0, r.output
        assert "speed and memory" not in r.stderr
        r = run(main, cmd + ["--engine", "transformers", "--json"])
        assert r.exit_code in (0, 3), r.output
        assert "speed and memory" in r.stderr
