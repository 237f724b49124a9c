"""Benchmark (not a test): cold-start wall time of `advisor recommend`, as a new process each run.

    python tests/bench_cold_start.py [--runs 10] [--json] [--auto]

Prints median and spread; the bars are under 1 s (issue 2) and under 0.3 s for one engine (issue 13) on a
2-core machine. Nothing is asserted:
speed claims live in benchmarks, not in timed tests.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CMD = [sys.executable, "-m", "advisor.cli", "recommend", "--gpu", "l4", "--model", "llama3.1-8b",
       "--max-ppl-delta", "2%"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="time the --json output path instead of the table")
    ap.add_argument("--auto", action="store_true", help="time --engine auto (every engine searched; bar: < 1 s)")
    args = ap.parse_args()
    cmd = CMD + (["--json"] if args.json else []) + (["--engine", "auto"] if args.auto else [])
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"advisor recommend cold start: median {med:.3f} s, min {min(times):.3f}, max {max(times):.3f} "
          f"over {args.runs} runs ({'json' if args.json else 'table'} output{', --engine auto' if args.auto else ''})")
    import os
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("note: PYTHONDONTWRITEBYTECODE is set, so every run compiled the project's modules from source "
              "(an installed package has its bytecode); `env -u PYTHONDONTWRITEBYTECODE` times what users get")


if __name__ == "__main__":
    main()
