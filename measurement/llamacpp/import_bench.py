"""Rows from a llama-bench ``-o json`` file that a device script saved raw (measurement/llamacpp/old_build.sh),
appended to ``data/llamacpp/rows.csv`` with the call's provenance; a row already there is not written again.

    python -m measurement.llamacpp.import_bench RAW.json --model llama3-8b --source-id ID --engine-version V \\
        --build-flags="-D..." --date 2026-12-02 --commit abc1234 [--notes "..."] [--rows PATH]

The GGUF file is not kept, so its facts come from the record (llama-bench's model_size, model_n_params) and the
catalog's architecture (gguf_arch.arch_spec); the bytes one decode step reads are model_size less the token
embedding (only gathered), at the bytes per weight of the type the file stores it in (:data:`EMBED_BYTES`). The
roofline beside each row uses the GPU's datasheet bandwidth and 16-bit peak (profiles/data/gpus.yaml): the call
did not measure a copy bandwidth.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from profiles.dtypes import BF16

from .bench import COLUMNS, ModelFacts, RowWriter, make_row, parse_llama_bench_record, roofline, _r

ROWS = Path(__file__).resolve().parents[1] / "data" / "llamacpp" / "rows.csv"
# Bytes per weight of token_embd.weight per file type: F16 keeps it in F16, Q4_0 in Q4_0 (18 bytes per 32 weights),
# Q4_K_M in Q4_K (144 bytes per 256): the files of today's build in rows.csv read, per step, their tensors less an
# embedding of that size to the byte (llama3.1-8b Q4_K_M of llamacpp-h200-20261201-call2: 4,617,396,480 bytes, less
# also the 256-byte rope_freqs; llama2-13b F16 / Q4_0 / Q4_K_M against llama-bench's model_size of call 29).
EMBED_BYTES = {"F16": 2.0, "Q4_0": 18 / 32, "Q4_K_M": 144 / 256}
GGUF_TYPES = {"F16": "F16", "Q4_K - Medium": "Q4_K_M", "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K - Medium": "Q5_K_M",
              "Q4_0": "Q4_0", "IQ4_XS - 4.25 bpw": "IQ4_XS"}
IDENTITY = ("source_id", "engine_version", "build_flags", "model", "precision", "metric", "prompt_len", "gen_len",
            "depth", "flash_attn", "batch")


def facts_of(rec: dict, model: str) -> ModelFacts:
    from profiles import load

    from .gguf_arch import arch_spec
    llm = load().llm(model)
    spec = arch_spec(llm)
    qtype = GGUF_TYPES[rec["model_type"].split(" ", 2)[2]]
    return ModelFacts(model=model, qtype=qtype, file_bytes=int(rec["model_size"]), tensor_bytes=int(rec["model_size"]),
                      embd_bytes=int(llm.vocab_size * llm.hidden_size * EMBED_BYTES[qtype]), tied=spec.tied,
                      n_params=int(rec["model_n_params"]), block_params=spec.layer_params,
                      head_params=spec.output_params, layers=llm.num_hidden_layers, heads=llm.num_attention_heads,
                      head_dim=llm.head_dim or llm.hidden_size // llm.num_attention_heads,
                      kv_heads=llm.num_key_value_heads)


def rows_of(records: list[dict], ctx: dict) -> list[dict]:
    from profiles import load
    gpu = load().gpu(ctx.get("gpu", "h200"))
    bw, peak = float(gpu.mem_bw_gbps), float(gpu.peak_tflops(BF16))
    out = []
    for rec in records:
        f = facts_of(rec, ctx["model"])
        c = {**ctx, "qtype": f.qtype, "flash_attn": "on" if rec.get("flash_attn") else "off",
             "command": ctx.get("command", ""), "date_utc": rec.get("test_time", "")}
        c["notes"] = "; ".join(x for x in (f"random weights; flash attention {c['flash_attn']}; -ngl 99",
                                           "roofline: datasheet bandwidth and 16-bit peak (no copy bandwidth measured)",
                                           ctx.get("notes", "")) if x)
        for m in parse_llama_bench_record(rec):
            row = make_row(m, f, c)
            row["file"] = ""
            rv = roofline(f, m.metric, m.batch, m.prompt_len or 0, m.gen_len or 0, m.depth, m.kv, bw, peak,
                          ubatch=int(rec.get("n_ubatch", 512)))
            row.update(roofline_value=_r(rv), roofline_frac=_r(m.value / rv, 4),
                       roofline_flag="ABOVE_ROOFLINE" if m.value > rv else "", model_file_gb="")
            out.append(row)
    return out


def _key(r: dict) -> tuple:
    return tuple(str(r.get(k, "")).removesuffix(".0") for k in IDENTITY)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--source-id", required=True)
    ap.add_argument("--engine-version", required=True)
    ap.add_argument("--build-flags", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--command", default="")
    ap.add_argument("--gpu-name", default="NVIDIA H200")
    ap.add_argument("--notes", default="")
    ap.add_argument("--rows", type=Path, default=ROWS)
    a = ap.parse_args(argv)
    try:
        records = json.loads(a.raw.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: {a.raw}: {e}", file=sys.stderr)
        return 2
    ctx = {"model": a.model, "source_id": a.source_id, "engine_version": a.engine_version,
           "build_flags": a.build_flags, "date": a.date, "commit": a.commit, "command": a.command,
           "gpu_name": a.gpu_name, "notes": a.notes}
    seen = set()
    if a.rows.exists():
        with open(a.rows, newline="") as fh:
            seen = {_key(r) for r in csv.DictReader(fh)}
    w = RowWriter(a.rows)
    new = 0
    for row in rows_of(records, ctx):
        if _key(row) in seen:
            continue
        seen.add(_key(row))
        w.write({k: row.get(k, "") for k in COLUMNS})
        new += 1
    w.close()
    print(f"{a.rows}: {new} rows added", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
