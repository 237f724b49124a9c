"""measurement/power_probe.py without a GPU: the plan, the work of a call, the window's NVML state, the
roofline flag and resuming a run."""
from __future__ import annotations

import csv

import pytest

from measurement import power_probe as P


def test_plan_puts_the_duty_sweeps_first_and_names_each_case_once():
    cases = P.plan()
    assert len({c["case"] for c in cases}) == len(cases)
    assert [c["duty"] for c in cases[:len(P.DUTIES)]] == list(P.DUTIES)
    assert {c["rows_m"] for c in cases if c["case"].startswith("gemm-m")} == set(P.GEMM_ROWS) - {P.K}


def test_a_gemm_call_moves_its_three_matrices_and_does_2mnk_flops():
    b, f = P.work_per_call("gemm", 16)
    assert b == 2 * (16 * P.K + P.K * P.N + 16 * P.N) and f == 2 * 16 * P.N * P.K
    assert P.work_per_call("copy", 0) == (2.0 * P.COPY_BYTES, 0.0)


def test_utilisation_is_over_the_whole_window_and_a_bug_above_the_roofline_is_flagged():
    case = {"kind": "copy", "rows_m": 0}
    r = P.derive(case, calls=2000, window_s=1.0, busy_s=0.5, gbps=4800, tflops=989)
    assert r["u_memory"] == pytest.approx(2 * P.COPY_BYTES * 2000 / 1e9 / 4800, rel=1e-3)
    assert r["busy_frac"] == 0.5 and r["roofline_flag"] == "above roofline (bug)"
    assert P.derive(case, calls=10, window_s=1.0, busy_s=0.5, gbps=4800, tflops=989)["roofline_flag"] == ""


def test_window_state_reads_the_energy_counter_inside_the_window_only():
    smp = [(0.0, 0, 345, 30, 0.0), (1.0, 50, 1900, 40, 100e3), (2.0, 100, 1980, 50, 700e3), (3.0, 0, 345, 30, 9e9)]
    s = P.window_state(smp, 0.5, 2.5)
    assert s["avg_power_w"] == 600.0 and s["gpu_util_pct"] == 75.0 and s["sm_clock_mhz"] == 1940
    assert P.window_state(smp[:1], 0, 5) == {}


def test_a_rerun_skips_the_cases_already_written(tmp_path):
    path = tmp_path / "power_probe.csv"
    assert P.done_cases(path) == set()
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=P.COLUMNS)
        w.writeheader()
        w.writerow({"case": "copy-d0"})
    assert P.done_cases(path) == {"copy-d0"}


def test_the_second_kinds_count_their_reads_and_the_fp8_operands_one_byte_each():
    b, f = P.work_per_call("attn", 0)
    a = P.ATTN
    assert b == 2 * 2 * a["batch"] * a["heads"] * a["ctx"] * a["head_dim"] and f == 2 * b / 2
    assert P.work_per_call("eltwise", 0) == (3.0 * 2 * P.ELT_ELEMS, float(P.ELT_ELEMS))
    b8, f8 = P.work_per_call("gemm_fp8", P.K)
    assert b8 == P.K * P.K + P.K * P.N + 2 * P.K * P.N and f8 == P.work_per_call("gemm", P.K)[1]
