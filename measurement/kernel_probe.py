"""Kernel probe: the linear projections of one decoder layer of a catalog model, per weight method, timed alone.

Independent evidence for the harness cost model's kernel figures (models/harness_fit_kernels.py): a method the
measured rows of a validation fold never saw takes its compiled bandwidth fraction and prefill compute fraction
from these probes (scaled by what the fold's fitted methods show against their own probes), not from the other
methods' median. Each probe row is one (model, method, mode, rows) on one GPU:

* ``graph``: the layer's projections (q, k, v, o, gate, up, down; each fed its own random input of ``rows`` rows)
  as one ``torch.compile``d function (inductor default mode, as the harness's compiled decoder layer), replayed as a
  CUDA graph (as the harness's decode step) where it can be captured, plain calls otherwise (noted);
* ``eager``: the same projections as plain PyTorch calls (the harness prefills eagerly).

Each timing is the median of ``iters`` windows between CUDA events (a device sync at both ends), each window
``reps`` calls. Rows carry the weight parameters, FLOPs, the machine's measured copy bandwidth and matmul peaks and
the roofline time. Random weights: speed does not depend on weight values. Run on the GPU machine:
``python -m measurement.kernel_probe --out DIR [--deadline-s S]``; rows are appended to ``DIR/kernel_probe.jsonl``
the moment each exists, and a rerun on the same file skips the rows it holds.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PLAN_PATH = Path(__file__).resolve().parent / "sweeps" / "kernel_probe.yaml"


def _plan() -> tuple[list[tuple[str, list[tuple[str, str]]]], tuple[int, ...], tuple[int, ...]]:
    """(model, [(precision, sparsity)]) pairs, graph rows and eager rows from sweeps/kernel_probe.yaml."""
    import yaml

    d = yaml.safe_load(PLAN_PATH.read_text())
    return ([(m, [tuple(x) for x in v]) for m, v in d["models"].items()], tuple(d["graph_rows"]),
            tuple(d["eager_rows"]))


PLAN, GRAPH_ROWS, EAGER_ROWS = _plan()


def key(r: dict) -> tuple:
    return (r["gpu_name"], r["model"], r["precision"], r["sparsity"], r["mode"], r["rows"])


def _layer(model_id: str, precision: str, sparsity: str, device: str = "cuda"):
    """A one-layer random-weight copy of ``model_id`` with ``sparsity`` then ``precision`` applied, built as the
    harness builds its models (measurement.prepare.prepare_model); returns the model and its decoder linears."""
    from .build import profile_config
    from .method_base import decoder_linears
    from .prepare import prepare_model
    from .store import RunConfig

    cfg = copy.deepcopy(profile_config(model_id))
    cfg.num_hidden_layers = 1
    ctx = prepare_model(RunConfig(model_id, precision=precision, sparsity=sparsity), device, config=cfg)
    return ctx.model, [lin for _, lin in decoder_linears(ctx.model)]


def _time_us(fn, iters: int, reps: int) -> float:
    import torch

    from .roofline import event_times_ms

    def window():
        for _ in range(reps):
            fn()
    ms = event_times_ms(window, iters=iters, warm=2)
    torch.cuda.synchronize()
    return statistics.median(ms) * 1e3 / reps


def _runner(lins, rows: int, mode: str, graph: bool = True):
    """(callable, how) for the projections at ``rows`` rows: compiled + CUDA graph (``graph``), or eager."""
    import torch

    dt = torch.bfloat16
    xs = [torch.randn(rows, lin.in_features, device="cuda", dtype=dt) for lin in lins]

    def step(xs):
        return [lin(x) for lin, x in zip(lins, xs)]
    if mode == "eager":
        return (lambda: step(xs)), "eager"
    torch.compiler.reset()
    fn = torch.compile(step, fullgraph=False, dynamic=False)
    with torch.inference_mode():
        for _ in range(3):
            fn(xs)
        torch.cuda.synchronize()
        if not graph:
            return (lambda: fn(xs)), "compiled, no graph (capture failed in an earlier process)"
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn(xs)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn(xs)
            return g.replay, "compiled+graph"
        except Exception as e:  # bitsandbytes LLM.int8 and torchao w8a8 fail capture (shared/gpu-notes.md); the
            raise CaptureFailed(f"{type(e).__name__}: {e}") from e  # failed capture leaves the process unusable


class CaptureFailed(RuntimeError):
    """A CUDA graph capture failed: the CUDA context is left unusable (its RNG stays in capture mode), so the
    process ends and the parent reruns the rest without graphs."""


def probe_one(model_id, precision, sparsity, lins, mode, rows, peaks, prov, graph: bool = True) -> dict:
    import torch

    from .roofline import matmul_dtype

    fn, how = _runner(lins, rows, mode, graph)
    with torch.inference_mode():
        us = _time_us(fn, iters=15 if rows <= 64 else 7, reps=20 if rows <= 64 else 3)
    params = sum(lin.in_features * lin.out_features for lin in lins)
    flops = 2.0 * rows * params
    mm = matmul_dtype(precision)
    pk = peaks.get(f"matmul_tflops_{mm}") or peaks.get("matmul_tflops_bf16")
    bw = peaks["copy_bw_gbps"]
    return {**prov, "model": model_id, "precision": precision, "sparsity": sparsity, "mode": mode, "rows": rows,
            "how": how, "us": round(us, 2), "linear_params": params, "flops": flops, "copy_bw_gbps": round(bw, 1),
            "matmul_dtype": mm, "matmul_tflops": round(pk, 1),
            "bf16_floor_us": round(2.0 * params / (bw * 1e9) * 1e6, 2),
            "compute_floor_us": round(flops / (pk * 1e12) * 1e6, 2),
            "tflops_achieved": round(flops / (us * 1e-6) / 1e12, 2)}


def _prov() -> dict:
    import torch

    from .env import _version, git_commit

    return {"gpu_name": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "torchao": _version("torchao"), "bitsandbytes": _version("bitsandbytes"),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"), "git_commit": git_commit(),
            "weights": "random"}


def _todo(done: set, prov: dict, model_id: str, precision: str, sparsity: str) -> list[tuple[str, int]]:
    """(mode, rows) not yet in ``done``: eager first (a failed graph capture ends the process); no compiled rows the
    harness's compiled backend refuses (measurement.precision.compiled_check)."""
    from .precision import compiled_check

    return [(m, r) for m, rs in (("eager", EAGER_ROWS), ("graph", GRAPH_ROWS)) for r in rs
            if key({**prov, "model": model_id, "precision": precision, "sparsity": sparsity, "mode": m, "rows": r})
            not in done and (m == "eager" or compiled_check(precision, r) is None)]


def _done(f: Path) -> set:
    return {key(json.loads(s)) for s in f.read_text().splitlines() if s.strip()} if f.exists() else set()


def run_one(out: Path, model_id: str, precision: str, sparsity: str, graph: bool) -> int:
    """Child process: one (model, method); rows appended to ``out``/kernel_probe.jsonl. Exit 3: capture failed."""
    peaks = json.loads((out / "peaks.json").read_text())
    prov = _prov()
    f = out / "kernel_probe.jsonl"
    try:
        _, lins = _layer(model_id, precision, sparsity)
    except Exception as e:
        print(f"{model_id} {precision} {sparsity}: not applied: {type(e).__name__}: {e}"[:300], file=sys.stderr)
        return 4
    for mode, rows in _todo(_done(f), prov, model_id, precision, sparsity):
        try:
            r = probe_one(model_id, precision, sparsity, lins, mode, rows, peaks, prov, graph)
        except CaptureFailed as e:
            print(f"{model_id} {precision} {sparsity} {rows}: graph capture failed: {e}"[:300], file=sys.stderr)
            return 3
        except Exception as e:
            print(f"{model_id} {precision} {sparsity} {mode} {rows}: {type(e).__name__}: {e}"[:300], file=sys.stderr)
            continue
        with f.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(f"{model_id:13s} {precision:9s} {sparsity:14s} {mode:5s} {rows:5d} {r['us']:10.1f} us "
              f"{r['tflops_achieved']:7.1f} TF/s floor {r['bf16_floor_us']:8.1f} {r['how']}", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline-s", type=float, default=540.0)
    ap.add_argument("--one", help="MODEL,PRECISION,SPARSITY (the child process)")
    ap.add_argument("--no-graph", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.one:
        return run_one(out, *a.one.split(","), graph=not a.no_graph)
    from .roofline import machine_peaks

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "peaks.json").exists():
        (out / "peaks.json").write_text(json.dumps(machine_peaks()))
    prov = _prov()
    for model_id, methods in PLAN:
        for precision, sparsity in methods:
            graph = True
            while _todo(_done(out / "kernel_probe.jsonl"), prov, model_id, precision, sparsity):
                left = a.deadline_s - (time.time() - t0)
                if left < 20:
                    print("deadline reached", file=sys.stderr)
                    return 0
                cmd = [sys.executable, "-m", "measurement.kernel_probe", "--out", str(out),
                       "--one", f"{model_id},{precision},{sparsity}"] + ([] if graph else ["--no-graph"])
                try:
                    rc = subprocess.run(cmd, timeout=left).returncode
                except subprocess.TimeoutExpired:
                    return 0
                if rc == 3 and graph:
                    graph = False
                    continue
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
