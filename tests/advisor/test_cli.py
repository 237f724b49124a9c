import json

import pytest
from click.testing import CliRunner

from advisor.cli import main, parse_fraction


@pytest.fixture()
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args))


def test_recommend_json_carries_intervals_and_sources(run):
    r = run("recommend", "--gpu", "l4", "--model", "llama3.1-8b", "--max-ppl-delta", "2%", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    rec = d["recommended"]
    for key in ("decode_tok_s", "prefill_ms", "j_per_token", "usd_per_mtok", "quality_loss"):
        e = rec[key]
        assert e["low"] <= e["value"] <= e["high"] and e["source"] in ("analytical", "published", "measured", "fitted", "transferred")
    assert rec["memory"]["per_gpu_gb"]["value"] <= 24
    assert d["deploy"]["command"].startswith("vllm serve") and d["deploy"]["engine"].startswith("vllm")


def test_unknown_gpu_is_a_clear_error(run):
    r = run("recommend", "--gpu", "rtx4009", "--model", "llama3.1-8b")
    assert r.exit_code == 2
    assert "unknown gpu 'rtx4009'" in r.stderr and "rtx4090" in r.stderr
    assert "Traceback" not in r.output


def test_unknown_model_offers_matches(run):
    r = run("recommend", "--gpu", "l4", "--model", "llama-3.1-8")
    assert r.exit_code == 2 and "llama3.1-8b" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (("--max-ppl-delta", "two"), "not a number"),
    (("--max-ppl-delta", "-1%"), "accepted 0% to 100%"),
    (("--max-ppl-delta", "150%"), "accepted 0% to 100%"),
    (("--max-accuracy-drop", "-1"), "accepted 0 to 100 points"),
    (("--max-longctx-drop", "x"), "not a number of points"),
    (("--context", "-5"), "context"),
    (("--batch", "x"), "batch"),
    (("--objective", "speed"), "objective"),
    (("--context", "100", "--gen-len", "200"), "smaller than --context"),
])
def test_malformed_numbers(run, args, needle):
    r = run("recommend", "--gpu", "l4", "--model", "llama3.1-8b", *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output.lower() or needle in (r.stderr or "").lower()
    assert "Traceback" not in r.output


def test_impossible_constraints_explain_each_block(run):
    r = run("recommend", "--gpu", "t4", "--model", "llama3.1-70b", "--max-ppl-delta", "0.5%",
            "--min-tokens-per-s", "500", "--json")
    assert r.exit_code == 3
    d = json.loads(r.stdout)
    assert d["recommended"] is None and d["relaxations"]
    assert d["rejected_counts"]["memory"] > 0
    assert any("memory" in x for x in d["relaxations"])


def test_parse_fraction():
    assert parse_fraction("2%") == pytest.approx(0.02)
    assert parse_fraction("0.02") == pytest.approx(0.02)
    assert parse_fraction("none") is None


def test_profiles_list_and_show(run):
    r = run("profiles", "list", "gpus", "--json")
    assert r.exit_code == 0 and any(g["id"] == "h200" for g in json.loads(r.stdout))
    r = run("profiles", "show", "a100")
    assert r.exit_code == 0 and "ambiguous" in r.stderr
    r = run("profiles", "show", "h2000")
    assert r.exit_code == 2 and "h200" in r.stderr


def test_core_commands_do_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, advisor.cli; from click.testing import CliRunner; "
            "CliRunner().invoke(advisor.cli.main, ['recommend','--gpu','l4','--model','llama3.1-8b','--json']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_validate_engine_refuses_unknown_and_harness_engines(run):
    r = run("validate", "--engine", "vlm")
    assert r.exit_code == 2 and "vllm" in r.stderr
    r = run("validate", "--engine", "transformers")
    assert r.exit_code == 2 and "without --engine" in r.stderr


def test_predict_command_json_and_unsupported_exit(run):
    r = run("predict", "--gpu", "h100-sxm", "--model", "llama3.1-8b", "--engine", "vllm", "--precision", "fp8", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["supported"] and d["tpot_ms"]["unit"] == "ms"
    r = run("predict", "--gpu", "t4", "--model", "llama3.1-8b", "--engine", "tensorrt-llm", "--precision", "awq-int4")
    assert r.exit_code == 3 and "vllm" in r.stdout


def test_a_backend_typed_for_a_serving_engine_is_said_to_be_ignored(run):
    args = ("predict", "--gpu", "h200", "--model", "llama3.1-8b", "--json")
    r = run(*args, "--engine", "vllm", "--backend", "eager")
    assert r.exit_code == 0 and "--backend applies to the transformers engine only; vllm ignores it" in r.stderr
    assert json.loads(r.stdout)["supported"]  # stdout stays strict JSON
    assert "--backend" not in run(*args, "--engine", "vllm").stderr  # the default is not the user's choice
    assert "ignores it" not in run(*args, "--engine", "transformers", "--backend", "eager").stderr
    assert "ignores it" not in run("recommend", "--gpu", "l4", "--model", "llama3.1-8b", "--engine", "auto",
                                   "--backend", "eager", "--json").stderr


def test_recommend_engine_auto_names_the_winner(run):
    r = run("recommend", "--gpu", "rtx4090", "--model", "llama3.1-8b", "--engine", "auto", "--max-ppl-delta", "3%",
            "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert any(n.startswith("engine auto:") for n in d["notes"])


@pytest.mark.parametrize("text", ["2%", "0.02", "2"])
def test_ppl_bound_spellings_agree(run, text):
    """2%, 0.02 and 2 (read as percent, said so) are the same bound."""
    r = run("recommend", "--gpu", "l4", "--model", "llama3.1-8b", "--max-ppl-delta", text, "--json")
    assert r.exit_code == 0, r.output
    import json
    d = json.loads(r.stdout)
    assert abs(d["request"]["max_quality_loss"] - 0.02) < 1e-12
    if text == "2":
        assert "read as 2%" in r.stderr


def test_card_command_gates_on_perplexity_and_names_its_source(run):
    import json
    r = run("recommend", "--gpu", "l4", "--model", "llama3.1-8b", "--max-ppl-delta", "2%", "--json")
    d = json.loads(r.stdout)
    q = d["recommended"]["quality"]["ppl_delta"]
    assert q["value"] is not None and q["value"] <= 2.0 and q["unit"] == "%"
    assert q["kind"] in ("published", "transferred", "reference") and q["source"]


def test_validate_quality_reports_each_quantity(run):
    import json
    r = run("validate", "--quality", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert {"ppl_delta", "accuracy_drop", "longctx_drop"} <= set(d)
    fams = {k: v for k, v in d["ppl_delta"].items() if not k.startswith("_")}
    assert fams and all(0 <= v["coverage90"] <= 1 and v["mae_points"] >= 0 for v in fams.values())
