"""The shipped measurement dataset: ``measurement/data/measurements.csv`` + ``measurements.meta.json``.

``load_dataset()`` reads it (pandas only; this module never imports torch). ``import_rows(jsonl)`` appends
the rows of a harness run (``<out>/rows.jsonl``) that the CSV does not hold yet (same ``row_id``: same
config key, GPU UUID and measurement time) and records the run in the sidecar.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
CSV_PATH = DATA_DIR / "measurements.csv"
META_PATH = DATA_DIR / "measurements.meta.json"

# name -> (unit, meaning). Order = CSV column order.
COLUMNS: dict[str, tuple[str, str]] = {
    "row_id": ("", "hash of key + gpu_uuid + date_utc; unique per measured row"),
    "key": ("", "config identity: gpu|model|precision|sparsity|kv|kv_budget|backend|batch|prompt_len|gen_len|weights"),
    "run_id": ("", "harness run (output folder / device call) the row came from"),
    "status": ("", "ok | does_not_fit (CUDA out of memory) | unsupported (method cannot run here; see reason) | error"),
    "reason": ("", "why a row is not ok"),
    "gpu": ("", "our GPU profile id (profiles/data/gpus.yaml), from the CUDA device name"),
    "model": ("", "our LLM profile id (profiles/data/llms.yaml)"),
    "precision": ("", "weight precision method id (profiles/data/methods.yaml)"),
    "sparsity": ("", "sparsity method id: dense, 2:4-magnitude, 2:4-wanda, drop-N (N layers removed)"),
    "kv": ("", "KV-cache method id"),
    "kv_budget": ("tokens", "KV budget per layer (mean over layers for pyramidkv) for eviction policies"),
    "backend": ("", "eager (transformers forward per token, DynamicCache) | compiled (StaticCache + torch.compile reduce-overhead, CUDA graphs)"),
    "batch": ("sequences", "concurrent sequences"),
    "prompt_len": ("tokens", "prompt length per sequence"),
    "gen_len": ("tokens", "decoded tokens per sequence in each timed decode window"),
    "weights": ("", "weights requested: random | local path | hub id"),
    "weights_source": ("", "weights used: random (profile architecture, normal(0,0.02)) | path:... | hf:..."),
    "decode_ms_per_token": ("ms", "median over trials of decode window time / gen_len (one token for every sequence)"),
    "decode_tok_s": ("tokens/s", "batch * 1000 / decode_ms_per_token"),
    "decode_spread_pct": ("%", "(max - min) / median of the per-trial decode ms; flagged above 3"),
    "prefill_ms": ("ms", "median prefill time of batch x prompt_len tokens (last-token logits only)"),
    "prefill_tok_s": ("tokens/s", "batch * prompt_len * 1000 / prefill_ms"),
    "prefill_spread_pct": ("%", "(max - min) / median of per-trial prefill ms"),
    "ttft_ms": ("ms", "prefill_ms + decode_ms_per_token"),
    "prefill_chunk": ("tokens", "prompt tokens per sequence per prefill forward (long prompts x large batches are prefilled in chunks)"),
    "peak_mem_gb": ("GB (1e9 B)", "torch.cuda.max_memory_allocated over the config (warm-up and trials)"),
    "peak_reserved_gb": ("GB", "torch.cuda.max_memory_reserved over the config"),
    "weights_gb": ("GB", "memory allocated by the built + compressed model (all parameters and buffers)"),
    "step_weight_gb": ("GB", "weight bytes one decode step must read (weights_gb minus an untied input embedding)"),
    "kv_gb": ("GB", "KV cache bytes held at the end of the last trial (static caches: whole allocation)"),
    "kv_stored_tokens": ("tokens", "mean tokens stored per layer (quantized + residual, or kept after eviction)"),
    "avg_power_w": ("W", "NVML energy over the decode window / its duration (median over trials)"),
    "j_per_token": ("J/token", "decode window energy / (batch * gen_len) (median over trials)"),
    "prefill_j": ("J", "prefill window energy (median)"),
    "sm_clock_mhz": ("MHz", "SM clock sampled at the end of each decode window (median)"),
    "copy_bw_gbps": ("GB/s", "device-to-device copy bandwidth measured at the start of the run (read + write)"),
    "host_launch_us": ("us", "host time per tiny op issued back to back, measured at the start of the run "
                              "(roofline.host_launch_us; blank before 2026-12-03)"),
    "matmul_tflops_bf16": ("TFLOP/s", "8192^3 bf16 matmul rate measured at the start of the run"),
    "matmul_tflops_fp8": ("TFLOP/s", "8192^3 fp8 e4m3 torch._scaled_mm rate measured at the start of the run"),
    "matmul_tflops_int8": ("TOP/s", "8192^3 int8 torch._int_mm rate measured at the start of the run"),
    "matmul_dtype": ("", "dtype the matmuls run in for the roofline (bf16, fp8, int8)"),
    "decode_bytes_per_step": ("B", "weights read once + KV read at the method's storage precision, one decode step"),
    "decode_flops_per_step": ("FLOP", "2 x matmul params x batch + attention 4 x batch x context x layers x heads x head_dim"),
    "roofline_decode_ms": ("ms", "max(bytes / copy_bw, flops / matmul peak) for one decode step"),
    "roofline_decode_bound": ("", "memory | compute: which term sets the decode roofline"),
    "decode_roofline_frac": ("fraction", "roofline_decode_ms / decode_ms_per_token (> 1 would be a bug)"),
    "prefill_flops": ("FLOP", "prefill FLOPs (causal attention counted half)"),
    "roofline_prefill_ms": ("ms", "max(bytes / copy_bw, flops / matmul peak) for the prefill"),
    "roofline_prefill_bound": ("", "memory | compute"),
    "prefill_roofline_frac": ("fraction", "roofline_prefill_ms / prefill_ms"),
    "flags": ("", "decode_spread_gt_3pct, prefill_spread_gt_3pct, BUG_*_gt_1 (roofline exceeded)"),
    "n_trials": ("", "timed trials (after warm-up)"),
    "decode_trials_ms": ("ms", "per-trial decode ms per token (JSON list)"),
    "prefill_trials_ms": ("ms", "per-trial prefill ms (JSON list)"),
    "warmup_s": ("s", "warm-up time (includes torch.compile for the first shape of a model group)"),
    "wall_s": ("s", "wall time of the whole config"),
    "apply_s": ("s", "time to build the model and apply its methods"),
    "compile_mode": ("", "compiled backend: regional-graph (one compiled decoder layer, one CUDA graph per step; "
                         "measurement/decode_graph.py), regional-graph-fused (the same with merged q|k|v and "
                         "gate|up weights of 16-bit layers), regional-graph-fused-cdt (plus inductor "
                         "coordinate-descent tuning), regional-graph-nocompile (merged weights and CUDA graph, "
                         "no inductor) or a torch.compile mode of the whole transformers step"),
    "capture_s": ("s", "regional-graph: compile (first shape of a model group) + CUDA-graph capture time"),
    "num_layers": ("", "decoder layers after the sparsity method (drop-N removes N)"),
    "method_notes": ("", "what the method code did (kernels, AWQ scales, dropped layers...)"),
    "cache_notes": ("", "KV cache implementation"),
    "gpu_name": ("", "CUDA device name"),
    "gpu_uuid": ("", "NVML GPU UUID"),
    "driver": ("", "NVIDIA driver version"),
    "cuda": ("", "CUDA version torch was built with"),
    "torch": ("", "torch version"),
    "transformers": ("", "transformers version"),
    "bitsandbytes": ("", "bitsandbytes version"),
    "torchao": ("", "torchao version"),
    "git_commit": ("", "our git commit (+dirty when measurement/ had uncommitted changes)"),
    "code_sha": ("", "sha256 prefix of the measurement/*.py files that ran"),
    "date_utc": ("", "when the row was measured"),
    "config_json": ("", "the exact RunConfig (JSON)"),
}

LIST_COLUMNS = ("decode_trials_ms", "prefill_trials_ms")


DEFAULT_COMPILE_MODE = "regional-graph-fused"  # the harness's default compiled backend


def row_id(r: dict) -> str:
    """Hash of the config key, GPU and time; a non-default compile mode joins it (two sweeps of one config
    with different compile modes at the same second collided; default-mode ids are unchanged, so earlier
    rows keep theirs)."""
    s = f"{r.get('key')}|{r.get('gpu_uuid')}|{r.get('date_utc')}"
    cm = r.get("compile_mode")
    if cm and cm != DEFAULT_COMPILE_MODE and r.get("backend", "compiled") == "compiled":
        s += f"|{cm}"
    return hashlib.sha256(s.encode()).hexdigest()[:16]


FIGURES = ("decode_ms_per_token", "decode_tok_s", "prefill_ms", "prefill_tok_s", "peak_mem_gb", "j_per_token",
           "avg_power_w")


def read_jsonl_checked(path: str | Path) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """(rows, quarantined): a torn or unparseable line, and an ``ok`` row with a non-finite or non-positive
    figure, go to ``quarantined`` as (line number, reason, text) instead of the rows."""
    import math
    out, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            try:
                r = json.loads(text)
            except json.JSONDecodeError as e:
                bad.append((n, f"not JSON ({e.msg}): a torn or corrupt line", text[:200]))
                continue
            if not isinstance(r, dict):
                bad.append((n, "not a JSON object", text[:200]))
                continue
            if r.get("status") == "ok":
                why = next((f"{k}={r[k]!r}" for k in FIGURES if isinstance(r.get(k), (int, float))
                            and not (math.isfinite(r[k]) and r[k] > 0)), None)
                if why:
                    bad.append((n, f"non-physical figure {why}", text[:200]))
                    continue
            out.append(r)
    return out, bad


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file that parse (a torn last line after a hard kill is left out)."""
    return read_jsonl_checked(path)[0]


def load_dataset(path: str | Path | None = None, *, ok_only: bool = False):
    """The dataset as a pandas DataFrame (empty with the right columns when the file does not exist)."""
    import pandas as pd

    p = Path(path) if path else CSV_PATH
    if not p.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.read_csv(p, keep_default_na=True, low_memory=False)
    if ok_only and "status" in df:
        df = df[df["status"] == "ok"].reset_index(drop=True)
    return df


def _flatten(r: dict, run_id: str) -> dict:
    out = {}
    for c in COLUMNS:
        v = r.get(c)
        if c in LIST_COLUMNS and v is not None and not isinstance(v, str):
            v = json.dumps(v)
        out[c] = v
    out["row_id"] = r.get("row_id") or row_id(r)
    out["run_id"] = r.get("run_id") or run_id
    return out


def import_rows(jsonl_path: str | Path, *, csv_path: str | Path | None = None, meta_path: str | Path | None = None,
                run_id: str | None = None, note: str | None = None) -> int:
    """Append rows of ``jsonl_path`` not already in the CSV; returns how many were added."""
    jsonl_path = Path(jsonl_path)
    csv_p = Path(csv_path) if csv_path else CSV_PATH
    meta_p = Path(meta_path) if meta_path else (csv_p.with_suffix("").with_suffix(".meta.json")
                                                if csv_path else META_PATH)
    run_id = run_id or jsonl_path.parent.name
    rows, bad = read_jsonl_checked(jsonl_path)
    if bad:  # never imported as ok: kept beside the input (which is not touched) and counted in a warning
        import logging
        import warnings
        q = jsonl_path.with_name(jsonl_path.name + ".quarantine.jsonl")
        with open(q, "a", encoding="utf-8") as fh:
            for n, why, text in bad:
                fh.write(json.dumps({"line": n, "reason": why, "text": text}) + "\n")
        msg = f"{len(bad)} row(s) of {jsonl_path} quarantined (torn, corrupt or non-physical), listed in {q}"
        logging.getLogger("measurement").warning(msg)
        warnings.warn(msg, stacklevel=2)
    new = [_flatten(r, run_id) for r in rows]
    from filelock import FileLock
    with FileLock(str(csv_p) + ".lock"):  # two imports at once: each sees the other's rows, none is lost
        return _append_new(new, csv_p, meta_p, run_id, note)


def _append_new(new: list[dict], csv_p: Path, meta_p: Path, run_id: str, note: str | None) -> int:
    import pandas as pd

    old = load_dataset(csv_p)
    if len(old) and list(old.columns) != list(COLUMNS):  # the column set changed: rewrite with the new header
        old = old.reindex(columns=list(COLUMNS))
        old.to_csv(csv_p, index=False)
    have = set(old["row_id"].astype(str)) if len(old) else set()
    seen = set()
    add = []
    for r in new:
        if r["row_id"] in have or r["row_id"] in seen:
            continue
        seen.add(r["row_id"])
        add.append(r)
    csv_p.parent.mkdir(parents=True, exist_ok=True)
    if add:
        df = pd.DataFrame(add, columns=list(COLUMNS))
        write_header = not csv_p.exists() or csv_p.stat().st_size == 0
        df.to_csv(csv_p, mode="a", header=write_header, index=False)
    _update_meta(meta_p, add, run_id, note)
    return len(add)


def _update_meta(meta_p: Path, added: list[dict], run_id: str, note: str | None) -> None:
    meta = {}
    if meta_p.exists():
        try:
            meta = json.loads(meta_p.read_text())
        except json.JSONDecodeError:
            meta = {}
    meta["description"] = ("Ground-truth LLM inference measurements (speed, memory, energy) taken by "
                           "measurement/harness.py; one row per config and run. Rows with weights_source "
                           "'random' use the profile's exact architecture with random weights: speed, memory "
                           "and energy are real, quality is not measured on them.")
    meta["columns"] = {c: {"unit": u, "meaning": m} for c, (u, m) in COLUMNS.items()}
    runs = meta.setdefault("runs", [])
    if added:
        first = added[0]
        prov = {k: first.get(k) for k in ("gpu", "gpu_name", "gpu_uuid", "driver", "cuda", "torch", "transformers",
                                          "bitsandbytes", "torchao", "git_commit", "code_sha",
                                          "copy_bw_gbps", "matmul_tflops_bf16")}
        ok = [r for r in added if r.get("status") == "ok"]
        for r in ok:
            if r.get("copy_bw_gbps") is not None:
                prov["copy_bw_gbps"], prov["matmul_tflops_bf16"] = r.get("copy_bw_gbps"), r.get("matmul_tflops_bf16")
                break
        dates = sorted(str(r.get("date_utc")) for r in added if r.get("date_utc"))
        entry = next((x for x in runs if x.get("run_id") == run_id), None)
        if entry is None:
            entry = {"run_id": run_id, "rows": 0}
            runs.append(entry)
        entry.update(provenance=prov, first_row_utc=entry.get("first_row_utc") or (dates[0] if dates else None),
                     last_row_utc=dates[-1] if dates else None)
        entry["rows"] = entry.get("rows", 0) + len(added)
        counts = entry.setdefault("status_counts", {})
        for r in added:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        if note:
            entry["note"] = note
    meta_p.parent.mkdir(parents=True, exist_ok=True)
    meta_p.write_text(json.dumps(meta, indent=1, default=str) + "\n")
