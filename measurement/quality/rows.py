"""What the quality campaign writes: one row per measured method appended to ``quality_rows.jsonl``
(:func:`append_row`, flushed and fsynced; :func:`read_rows` skips a line cut by a kill), the CSV of all
rows (:func:`write_csv`, columns :data:`COLUMNS`: perplexities, ``delta_rel`` as a fraction) and its
``.meta.json`` sidecar (:func:`metadata`), the printed table, and the provenance of the run.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import sys
from pathlib import Path

COLUMNS = ["model", "precision", "sparsity", "kv", "kv_budget", "metric", "seq_len", "stride", "n_tokens",
           "baseline", "value", "delta_rel", "gpu", "torch", "transformers", "bitsandbytes", "torchao",
           "git_commit", "date_utc", "weights", "status", "reason", "notes", "delta_ci95_lo", "delta_ci95_hi"]
ROWS_NAME = "quality_rows.jsonl"
CSV_NAME = "small_model_quality.csv"
META_NAME = "small_model_quality.meta.json"


def row_key(r: dict) -> tuple:
    b = r.get("kv_budget")
    return (r["model"], r["precision"], r["sparsity"], r["kv"], None if b in (None, "") else int(b), r["metric"],
            int(r["seq_len"]))


def read_rows(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a kill: that method is redone
    return rows


def append_row(path: Path, row: dict):
    lead = ""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            lead = "" if fh.read(1) == b"\n" else "\n"  # a line cut by a kill stays on its own line
    with open(path, "a") as fh:
        fh.write(lead + json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_csv(rows: list[dict], path: Path):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def _git_commit() -> str:
    """The harness's own rule (``ADVISOR_GIT_COMMIT`` first: a device copy's .git can be stale)."""
    from ..env import git_commit

    return git_commit()


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def provenance(device, git_commit: str | None) -> dict:
    import torch
    import transformers

    gpu, gpu_extra = "cpu", {}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        gpu = p.name
        gpu_extra = {"gpu_uuid": str(getattr(p, "uuid", "")), "cuda": torch.version.cuda,
                     "compute_capability": f"{p.major}.{p.minor}", "gpu_memory_mib": p.total_memory // 2**20}
        try:
            import pynvml

            pynvml.nvmlInit()
            gpu_extra["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:
            pass
    return {"gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
            "bitsandbytes": _version("bitsandbytes"), "torchao": _version("torchao"),
            "git_commit": git_commit or _git_commit(), "python": sys.version.split()[0], **gpu_extra}


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def print_table(rows: list[dict], file=None):
    file = file or sys.stdout
    print(f"{'precision':10} {'sparsity':14} {'kv':12} {'bud':>4} {'metric':16} {'value':>9} {'base':>8} "
          f"{'delta':>8} status", file=file)
    for r in rows:
        reason = f" ({r['reason'][:70]})" if r.get("reason") else ""
        print(f"{r['precision']:10} {r['sparsity']:14} {r['kv']:12} {str(r.get('kv_budget') or ''):>4} "
              f"{r['metric']:16} {_fmt(r.get('value'), '.3f'):>9} {_fmt(r.get('baseline'), '.3f'):>8} "
              f"{_fmt(r.get('delta_rel'), '+.2%'):>8} {r['status']}{reason}", file=file)


def metadata(args, prov: dict, model_id: str, wname: str, rows: list[dict], out: Path) -> dict:
    from . import corpus
    from . import model as M
    from .plan import variant_docs

    tl = out / "train_log.json"
    if not tl.exists():
        tl = M.DATA_DIR / "train_log.json"
    train = {}
    if tl.exists():
        t = json.loads(tl.read_text())
        train = {k: t.get(k) for k in ("params", "steps", "tokens", "train_wall_s", "best_step", "best_val_ppl",
                                       "val_ppl_bf16", "test_ppl_bf16", "settings", "provenance", "date_utc")}
    return {
        "what": "Measured perplexity deltas of compression methods on a small Llama-architecture model trained "
                f"here on the King James Bible. Real measurements, but of a {train.get('params') or 0:,}-parameter "
                "model: they show the direction and rough size of each method's effect, not the deltas of "
                "1B-70B models.",
        "model": model_id,
        "weights": f"measurement/data/quality/{wname} (bf16 safetensors, tied embeddings) + config.json",
        "architecture": M.TINY if args.tiny else M.SMALL,
        "training": train,
        "corpus": {
            "text": "King James Version of the Bible (1611), public domain",
            "source": "Debian package bible-kjv-text 4.38, dumped with `bible -f Gen1:1-Rev22:21` (bible-kjv 4.38); "
                      "kept as measurement/data/quality/kjv.txt.gz",
            "licence": "Debian copyright file: 'The copyright for the King James Version text of the Bible is "
                       "expired since the translation was done in 1611 under King James the first of Great Britain.'",
            "split": corpus.SPLIT_DOC,
            "format": "verse references stripped, one verse per line, books separated by an end-of-text token",
        },
        "tokenizer": "measurement/data/quality/tokenizer.json: byte-level BPE, vocab 4096 (incl. <|endoftext|>), "
                     "trained with `tokenizers` on the train split only",
        "protocols": {
            "ppl": f"test split as one token stream, non-overlapping windows of {args.seq_len} tokens "
                   f"(stride {args.seq_len}, tail dropped), one forward pass per window with no cache, "
                   f"positions 1..{args.seq_len - 1} scored; ppl = exp(sum NLL / n_tokens). n_tokens counts "
                   "scored predictions.",
            "ppl_decode": f"same windows; prefill the first {args.prefix} tokens into the cache under test "
                          "(eviction policies compress it right after prefill, as after a prompt), then feed "
                          f"the remaining {args.seq_len - args.prefix} tokens one at a time through that cache and "
                          "score every one of them (the first from the prefill's last logits); position ids are "
                          "the true positions. Baseline: same protocol with the plain 16-bit DynamicCache. "
                          "Quantized caches keep the last 128 tokens in 16 bit (apply.py default residual).",
            "ppl_decode_res0": "as ppl_decode, but the quantized cache keeps no 16-bit residual window: every "
                               "stored token is read back quantized (worst case). Baseline: ppl_decode's.",
            "delta_rel": "value / baseline - 1 (baseline = bf16, dense, full cache, same metric)",
            "delta_ci95": "delta_ci95_lo / _hi: 95% paired bootstrap interval of delta_rel over the test windows "
                          "(2000 resamples of windows; per-window NLLs are in quality_rows.jsonl): the spread "
                          "the choice of test text gives, not run-to-run noise (the evaluation is deterministic)",
            "calibration": f"{args.calib_windows} windows of {args.seq_len} tokens drawn (seed 1) from the "
                           "train split, in batches of 4: AWQ scale search, Wanda activation norms, ShortGPT "
                           "block influence",
            "order": "sparsity first (mask / drop layers), then precision; combos with 2:4 keep the mask in "
                     "dense storage so the quantizer can read it",
        },
        "methods": "; ".join(["applied by measurement/apply.py (see its docstring)", *variant_docs()]),
        "provenance": prov,
        "n_rows": len(rows),
        "status_counts": {s: sum(1 for r in rows if r.get("status") == s) for s in ("ok", "unsupported", "error")},
        "columns": COLUMNS,
        "generated_utc": _now(),
        "command": "python -m measurement.quality.campaign " + " ".join(sys.argv[1:]),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
