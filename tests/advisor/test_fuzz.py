"""A fuzz suite of the project's own (issue 15): generated invocations of every user command, asserting
no traceback, exit 2 on invalid input (and only then), and strict JSON (no NaN / Infinity) under --json.

Each generated invocation is either valid, or has exactly one invalid field, which the generator knows; a
valid one may still end in 3 (nothing feasible). CI runs ADVISOR_FUZZ_EXAMPLES (default 60) per command;
`ADVISOR_FUZZ_EXAMPLES=400 pytest tests/advisor/test_fuzz.py` is the 2,000-invocation benchmark run.
"""
from __future__ import annotations

import json
import math
import os

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor.cli import main
from profiles import load

CAT = load()
N = int(os.environ.get("ADVISOR_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
GPUS, MODELS = sorted(CAT.gpus), sorted(CAT.llms)
ENGINES = ["vllm", "sglang", "tensorrt-llm", "llama.cpp", "transformers", "auto"]
PRECISIONS = sorted(m.id for m in CAT.methods.values() if m.kind == "precision")

BAD_NUMBERS = ["-1", "0", "nan", "inf", "-inf", "1e308", "abc", "", "1e-400", "--", "1,5", "0x10"]
BAD_IDS = ["rtx4009", "llama-9000", "", " ", "../etc/passwd", "a" * 300]


def _strict(text: str):
    def bad(c):
        raise ValueError(f"non-strict JSON constant {c}")
    return json.loads(text, parse_constant=bad)


def _check(args: list[str], invalid: bool):
    r = CliRunner().invoke(main, args)
    shown = " ".join(args)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"traceback for: advisor {shown}\n{r.exception!r}")
    assert "Traceback" not in (r.output or ""), shown
    if invalid:
        assert r.exit_code == 2, f"exit {r.exit_code} on invalid input: advisor {shown}\n{r.output[-400:]}"
    else:
        assert r.exit_code in (0, 3), f"exit {r.exit_code} on valid input: advisor {shown}\n{r.output[-600:]}"
    if "--json" in args and r.exit_code == 0:
        _strict(r.stdout)
    if r.exit_code == 2:  # one line names the bad input (click's own option errors too: no usage block)
        assert "Usage:" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: "), shown
        if "--json" in args:
            assert _strict(r.stdout)["exit_code"] == 2, shown


def _pick(draw, valid, bad):
    """(value, invalid?) for one option."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(bad)), True
    return draw(valid), False


def _options(draw, args, specs, required=()):
    """Append each option of ``specs`` ((option, valid strategy, invalid values)) that is required or drawn;
    at most one of them invalid. Returns whether one is."""
    invalid = False
    for opt, valid, bad in specs:
        if opt in required or draw(st.booleans()):
            v, bad_here = _pick(draw, valid, bad) if not invalid else (draw(valid), False)
            invalid |= bad_here
            args += [opt, v]
    return invalid


def _invocation(draw, command, specs, required, gpus_default=None):
    """[command, options...] with at most one invalid option (see _options), ``--gpus`` set to
    ``gpus_default`` when not drawn (keeps a run short), and ``--json`` half of the time."""
    args = [command]
    invalid = _options(draw, args, specs, required)
    if gpus_default and "--gpus" not in args:
        args += ["--gpus", gpus_default]
    if draw(st.booleans()):
        args.append("--json")
    return args, invalid


@st.composite
def recommend_args(draw):
    return _invocation(draw, "recommend", (
            ("--gpu", st.sampled_from(GPUS), BAD_IDS),
            ("--model", st.sampled_from(MODELS), BAD_IDS),
            ("--max-ppl-delta", st.sampled_from(["2%", "0.02", "2", "none", "0.5%", "100%"]),
             ["-1%", "101%", "abc", "nan", "inf", "1e308"]),
            ("--context", st.integers(300, 4096).map(str), BAD_NUMBERS),  # every catalog model takes 4k
            ("--batch", st.integers(1, 256).map(str), BAD_NUMBERS),
            ("--engine", st.sampled_from(ENGINES), ["vllm2", "", "TRT"]),
            ("--num-gpus", st.sampled_from(["1", "2", "4", "8"]), BAD_NUMBERS),
    ), ('--gpu', '--model'))


@st.composite
def predict_args(draw):
    return _invocation(draw, "predict", (
            ("--gpu", st.sampled_from(GPUS), BAD_IDS),
            ("--model", st.sampled_from(MODELS), BAD_IDS),
            ("--engine", st.sampled_from(ENGINES[:-1]), ["auto2", "x"]),
            ("--precision", st.sampled_from(PRECISIONS), ["int3", "", "fp9"]),
            ("--batch", st.integers(1, 512).map(str), BAD_NUMBERS),
            ("--prompt-len", st.integers(1, 32000).map(str), BAD_NUMBERS),
            ("--gen-len", st.integers(1, 4096).map(str), BAD_NUMBERS),
    ), ('--gpu', '--model'))


@st.composite
def plan_args(draw):
    return _invocation(draw, "plan", (
            ("--model", st.sampled_from(MODELS), BAD_IDS),
            ("--qps", st.sampled_from(["0.5", "1", "10", "100"]), ["-1", "0", "nan", "inf", "1e308", "x"]),
            ("--gpus", st.sampled_from(["l4", "h100-sxm", "l4,a100-80g-sxm"]), ["l5", "h100-sxm,zzz"]),
            ("--ttft-p95", st.sampled_from(["1s", "500ms", "2", "0.5s"]), ["-1s", "0", "abc", "nanms", "1e308s"]),
            ("--tpot-p95", st.sampled_from(["50ms", "0.1s", "0.05"]), ["-5ms", "0ms", "x", "infms"]),
            ("--prompt-len", st.integers(1, 3800).map(str), BAD_NUMBERS),  # + gen 256 within 4k
            ("--max-accuracy-drop", st.sampled_from(["1", "0.5", "none", "3pt"]), ["-1", "101", "nan", "x"]),
    ), ('--model', '--qps'), gpus_default="l4")


@st.composite
def compare_args(draw):
    return _invocation(draw, "compare", (
            ("--model", st.sampled_from(MODELS), BAD_IDS),
            ("--gpus", st.sampled_from(["l4", "h100-sxm,l4"]), ["l5", ""]),
            ("--batch", st.integers(1, 64).map(str), BAD_NUMBERS),
            ("--max-tpot", st.sampled_from(["50ms", "0.2s", "none", "0.03"]), ["-5ms", "0ms", "x", "infms", "1e9s"]),
            ("--max-accuracy-drop", st.sampled_from(["1", "0.5", "none"]), ["-1", "101", "nan", "x"]),
            ("--usd-per-kwh", st.sampled_from(["0.1", "0.3"]), ["-1", "nan", "x"]),
    ), ('--model',), gpus_default="l4")


@SETTINGS
@given(recommend_args())
def test_fuzz_recommend(case):
    _check(*case)


@SETTINGS
@given(predict_args())
def test_fuzz_predict(case):
    _check(*case)


@SETTINGS
@given(plan_args())
def test_fuzz_plan(case):
    _check(*case)


@SETTINGS
@given(compare_args())
def test_fuzz_compare(case):
    _check(*case)


@SETTINGS
@given(st.binary(max_size=400))
def test_fuzz_fit_data_file(tmp_path_factory, blob):
    """A file of random bytes given to --data: exit 2 naming the file, never a traceback; the file is left
    as it was."""
    d = tmp_path_factory.mktemp("fuzz")
    f = d / "rows.csv"
    f.write_bytes(blob)
    r = CliRunner().invoke(main, ["validate", "--data", str(f), "--json"])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert f.read_bytes() == blob
    assert r.exit_code in (0, 2)


def test_strict_json_check_catches_nan():
    with pytest.raises(ValueError):
        _strict('{"x": NaN}')
    assert math.isfinite(_strict('{"x": 1.5}')["x"])


def test_json_errors_are_json_on_stdout():
    r = CliRunner().invoke(main, ["recommend", "--gpu", "rtx4009", "--model", "llama3.1-8b", "--json"])
    assert r.exit_code == 2
    d = _strict(r.stdout)
    assert "rtx4090" in d["error"] and d["exit_code"] == 2


def test_a_bad_option_value_is_one_line_and_json_under_json():
    """click's own parameter errors are answered like every other bad input (no usage block)."""
    r = CliRunner().invoke(main, ["recommend", "--gpu", "l4", "--model", "llama3.1-8b", "--max-ppl-delta", "-1",
                                  "--json"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "accepted 0% to 100%" in r.stderr
    assert "accepted 0% to 100%" in _strict(r.stdout)["error"]
    r = CliRunner().invoke(main, ["recommend", "--gpux", "l4"])
    assert r.exit_code == 2 and r.stderr.startswith("error: No such option") and r.stdout == ""


def test_regressions_found_by_the_fuzzer():
    """Each was a traceback or an exit 0 on invalid input (issue 15)."""
    cases = [["plan", "--model", "llama2-13b", "--qps", "1e308", "--gpus", "l4"],
             ["plan", "--model", "llama2-13b", "--qps", "1", "--ttft-p95", "1e308s", "--gpus", "l4"],
             ["compare", "--model", "llama2-13b", "--gpus", ""]]
    for args in cases:
        _check(args, invalid=True)
