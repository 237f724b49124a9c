"""Board power against what the GPU is asked to do (issue 14): kernels of known bytes and FLOPs run at a
set duty cycle, and NVML reports the power over the window (its energy counter), the share of time a
kernel ran (utilization.gpu), the SM clock and the temperature.

The kernels: a device-to-device copy (memory-bound), a bf16 GEMM of M x 8192 x 8192 (M = 8192:
compute-bound; few rows: weight streaming, as a decode step), and a stream of tiny element-wise kernels
(launch-bound: the GPU is "busy" while its SMs and memory do almost nothing). Each case runs ``duty`` of
every ``period`` seconds (the host issues kernels, synchronizes, then sleeps the rest), so the busy share
is set apart from how hard the busy time drives memory and tensor cores: the power model
(models/energy.py) sees only the latter today.

``python -m measurement.power_probe --out DIR --gpu h200 --commit SHA [--seconds 4]``: one row per case
appended to DIR/power_probe.csv the moment it is measured (a rerun skips the cases already there), with
the datasheet rooflines beside each row (u_memory, u_compute: bytes and FLOPs over the window at the
catalog's bandwidth and the dense peak of the case's tensor type, ``peak_dtype``). Needs torch with CUDA and pynvml (the device machine has both).
"""
from __future__ import annotations

import argparse
import csv
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

COLUMNS = ["case", "kind", "rows_m", "duty", "period_s", "window_s", "calls", "bytes", "flops", "busy_frac",
           "avg_power_w", "gpu_util_pct", "sm_clock_mhz", "temp_c", "achieved_gbps", "achieved_tflops",
           "datasheet_gbps", "datasheet_tflops", "peak_dtype", "u_memory", "u_compute", "roofline_flag", "gpu", "gpu_name",
           "driver", "torch", "commit", "date_utc", "weights"]
DUTIES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
GEMM_ROWS = (1, 16, 64, 256, 1024, 8192)
K = N = 8192
COPY_BYTES = 1 << 31      # elements of the copied buffer, in bytes (2 GiB); a call reads and writes it
TINY_ELEMS, TINY_PER_CALL = 4096, 100
ELT_ELEMS = 1 << 28       # bf16 elements of each operand of the large element-wise add (512 MiB)
ATTN = dict(batch=64, heads=8, ctx=4096, head_dim=128)  # decode attention: one query per sequence over its KV
SECOND = ("attn", "eltwise", "gemm_fp8")  # kinds added after the first run, at duty 0.5 and 1


def plan() -> list[dict]:
    """Every case, most informative first (a deadline cuts the tail): the three kinds across duty cycles,
    then the GEMM's row sweep at full duty."""
    out = [dict(case=f"{kind}-d{d:g}", kind=kind, rows_m=K if kind == "gemm" else 0, duty=d)
           for kind in ("copy", "gemm", "tiny") for d in DUTIES]
    out += [dict(case=f"gemm-m{m}-d1", kind="gemm", rows_m=m, duty=1.0) for m in GEMM_ROWS if m != K]
    out += [dict(case=f"{kind}-d{d:g}", kind=kind, rows_m=K if kind == "gemm_fp8" else 0, duty=d)
            for kind in SECOND for d in (0.5, 1.0)]
    return out


def work_per_call(kind: str, m: int) -> tuple[float, float]:
    """(bytes moved, FLOPs) of one call of a case's kernel."""
    if kind == "copy":
        return 2.0 * COPY_BYTES, 0.0
    if kind == "gemm":
        return 2.0 * (m * K + K * N + m * N), 2.0 * m * N * K
    if kind == "gemm_fp8":  # fp8 operands, bf16 output
        return float(m * K + K * N + 2 * m * N), 2.0 * m * N * K
    if kind == "eltwise":
        return 3.0 * 2 * ELT_ELEMS, float(ELT_ELEMS)
    if kind == "attn":  # K and V read once per call (bf16); QK^T and PV
        b, h, c, d = ATTN["batch"], ATTN["heads"], ATTN["ctx"], ATTN["head_dim"]
        return 2.0 * 2 * b * h * c * d, 4.0 * b * h * c * d
    return TINY_PER_CALL * 3.0 * 2 * TINY_ELEMS, TINY_PER_CALL * float(TINY_ELEMS)  # bf16 a + b -> c


def derive(case: dict, calls: int, window_s: float, busy_s: float, gbps: float, tflops: float) -> dict:
    """The row's work and its datasheet-relative utilisations over the whole window (``tflops``: the peak of
    the case's tensor type)."""
    b, f = work_per_call(case["kind"], case["rows_m"])
    byts, flops = b * calls, f * calls
    ach_gbps = byts / window_s / 1e9
    ach_tf = flops / window_s / 1e12
    u_m, u_c = ach_gbps / gbps, ach_tf / tflops
    return {"calls": calls, "bytes": byts, "flops": flops, "busy_frac": round(busy_s / window_s, 4),
            "achieved_gbps": round(ach_gbps, 1), "achieved_tflops": round(ach_tf, 2),
            "u_memory": round(u_m, 4), "u_compute": round(u_c, 4),
            "roofline_flag": "above roofline (bug)" if max(u_m, u_c) > 1.0 else ""}


def done_cases(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with open(path, newline="") as fh:
        return {r["case"] for r in csv.DictReader(fh)}


class Sampler(threading.Thread):
    """NVML power-relevant state of GPU 0 every ``period`` s."""

    def __init__(self, nv, h, period: float = 0.02):
        super().__init__(daemon=True)
        self.nv, self.h, self.period = nv, h, period
        self.samples: list[tuple[float, ...]] = []  # perf_counter s, util %, SM MHz, temp C, energy mJ
        self.halt = threading.Event()

    def run(self):
        nv, h = self.nv, self.h
        while not self.halt.is_set():
            self.samples.append((time.perf_counter(), float(nv.nvmlDeviceGetUtilizationRates(h).gpu),
                                 float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                                 float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                                 float(nv.nvmlDeviceGetTotalEnergyConsumption(h))))
            time.sleep(self.period)


def _kernel(torch, kind: str, m: int):
    dev = "cuda"
    if kind == "copy":
        src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    if kind == "gemm":
        a = torch.randn(m, K, dtype=torch.bfloat16, device=dev)
        w = torch.randn(K, N, dtype=torch.bfloat16, device=dev)
        return lambda: torch.matmul(a, w)
    if kind == "gemm_fp8":
        a8 = torch.randn(m, K, device=dev).to(torch.float8_e4m3fn)
        w8 = torch.randn(N, K, device=dev).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=dev)
        return lambda: torch._scaled_mm(a8, w8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    if kind == "eltwise":
        ea = torch.randn(ELT_ELEMS, dtype=torch.bfloat16, device=dev)
        eb, ec = torch.randn_like(ea), torch.empty_like(ea)
        return lambda: torch.add(ea, eb, out=ec)
    if kind == "attn":
        b, h, c, d = ATTN["batch"], ATTN["heads"], ATTN["ctx"], ATTN["head_dim"]
        q = torch.randn(b, h, 1, d, dtype=torch.bfloat16, device=dev)
        kk, vv = (torch.randn(b, h, c, d, dtype=torch.bfloat16, device=dev) for _ in range(2))
        return lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, vv)
    x = torch.randn(TINY_ELEMS, dtype=torch.bfloat16, device=dev)
    y = torch.randn_like(x)

    def tiny():
        for _ in range(TINY_PER_CALL):
            torch.add(x, y)
    return tiny


def window_state(samples: list, t0: float, t1: float) -> dict:
    """Average W (energy counter between the first and last sample inside [t0, t1]), mean utilization %, SM
    clock and temperature of the samples inside the window."""
    inside = [x for x in samples if t0 <= x[0] <= t1]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return {}
    n = len(inside)
    return {"avg_power_w": round((inside[-1][4] - inside[0][4]) / 1e3 / (inside[-1][0] - inside[0][0]), 1),
            "gpu_util_pct": round(sum(x[1] for x in inside) / n, 1), "sm_clock_mhz": round(sum(x[2] for x in inside) / n),
            "temp_c": round(sum(x[3] for x in inside) / n, 1)}


def run_case(torch, nv, h, case: dict, seconds: float, period: float) -> tuple[int, float, float, dict]:
    """Run one case for ``seconds``: (calls, window s, busy s, NVML state over the window)."""
    fn = _kernel(torch, case["kind"], case["rows_m"])
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    time.sleep(0.5)  # let the clocks settle to the case's own pattern from its first period
    s = Sampler(nv, h)
    calls, busy = 0, 0.0
    s.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p0 = time.perf_counter()
        while case["duty"] > 0 and time.perf_counter() - p0 < case["duty"] * period:
            fn()
            torch.cuda.synchronize()
            calls += 1
        busy += time.perf_counter() - p0
        rest = period - (time.perf_counter() - p0)
        if rest > 0:
            time.sleep(rest)
    t1 = time.perf_counter()
    time.sleep(0.05)
    s.halt.set()
    s.join()
    return calls, t1 - t0, busy, window_state(s.samples, t0, t1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpu", default="h200", help="catalog GPU id of the machine (datasheet rooflines)")
    ap.add_argument("--commit", default="")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--period", type=float, default=0.05)
    ap.add_argument("--deadline-s", type=float, default=480.0)
    ap.add_argument("--kinds", default="", help="comma-separated kinds to run (default: all)")
    a = ap.parse_args(argv)
    import pynvml as nv
    import torch

    from profiles import load
    from profiles.dtypes import BF16, FP8
    g = load().gpu(a.gpu)
    gbps, tflops = float(g.mem_bw_gbps), float(g.peak_tflops(BF16))
    tflops8 = float(g.peak_tflops(FP8) or tflops)
    kinds = {k for k in a.kinds.split(",") if k}
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    name, driver = nv.nvmlDeviceGetName(h), nv.nvmlSystemGetDriverVersion()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "power_probe.csv"
    have = done_cases(path)
    new = not path.exists()
    t_start = time.time()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for case in plan():
            if case["case"] in have or (kinds and case["kind"] not in kinds):
                continue
            if time.time() - t_start > a.deadline_s:
                print(f"deadline: stop before {case['case']}", flush=True)
                break
            calls, window, busy, state = run_case(torch, nv, h, case, a.seconds, a.period)
            row = {**case, "period_s": a.period, "window_s": round(window, 3),
                   **derive(case, calls, window, busy, gbps, tflops8 if case["kind"] == "gemm_fp8" else tflops),
                   "avg_power_w": "", "gpu_util_pct": "", "sm_clock_mhz": "", "temp_c": "", **state,
                   "datasheet_gbps": gbps,
                   "datasheet_tflops": tflops8 if case["kind"] == "gemm_fp8" else tflops,
                   "peak_dtype": FP8 if case["kind"] == "gemm_fp8" else BF16, "gpu": g.id,
                   "gpu_name": name if isinstance(name, str) else name.decode(), "driver": driver if isinstance(
                       driver, str) else driver.decode(), "torch": torch.__version__, "commit": a.commit,
                   "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "weights": "random (speed and power do not depend on values)"}
            w.writerow(row)
            fh.flush()
            print(f"{row['case']:14s} busy {row['busy_frac']:.2f} util {row['gpu_util_pct']}% "
                  f"{row['avg_power_w']} W  SM {row['sm_clock_mhz']} MHz  u_m {row['u_memory']:.3f} "
                  f"u_c {row['u_compute']:.3f}", flush=True)
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
