"""llama.cpp measurement rows: parsing llama-bench / llama-batched-bench output, the roofline, deadlines.

Pure Python (no torch, no gguf), so the CPU tests cover it. The device runner (``run.py``) feeds it.

Rows are the long format of ``measurement/data/published_engine/README.md`` plus provenance and physics
columns (``EXTRA_COLUMNS``). Metrics:

* llama-bench ``pp N`` -> ``prefill_tok_s`` (batch 1, prompt_len N, depth d)
* llama-bench ``tg N`` -> ``decode_tok_s`` (batch 1, gen_len N, depth d)
* llama-batched-bench (B sequences, prompt P, T generated each) -> ``prefill_tok_s`` (all B prompts
  together), ``output_tok_s`` (generated tokens/s of all B sequences) and ``decode_tok_s`` (per sequence,
  output_tok_s / B).

Statistic: the median of the repetitions after dropping the first (warm-up) one; ``n_reps`` says how many
were kept.

Roofline (``roofline``), an upper bound from the copy bandwidth measured on the machine (bytes read plus
written by a device-to-device copy) and the dense bf16 matmul rate measured there:

* decode, B sequences at context c: one step reads the weights once (all tensors but the token embedding,
  which is only gathered; when the head is tied the embedding IS read, as the head) plus B x c x KV bytes
  per token; it does 2 x (block + head params) + 4 x c x layers x heads x head_dim FLOPs per token.
  per-sequence tokens/s <= min(bw / bytes_step, peak / (B x flops_token)); all sequences: x B.
* prefill, prompt P at depth d: per token 2 x block params (llama-bench and batched-bench compute the head
  for the last token only) + 4 x (d + P/2) x layers x heads x head_dim; tokens/s <= peak / flops_token
  (and <= bw x ubatch / weight bytes, the weights read once per micro-batch).

``roofline_frac`` = value / roofline_value; above 1 the row is flagged (``roofline_flag``), a bug in the
measurement or the bound.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from profiles.dtypes import BF16, FP16
from . import engine_id

BASE_COLUMNS = ["engine", "engine_version", "gpu", "num_gpus", "parallel", "model", "precision", "kv_dtype",
                "batch", "prompt_len", "gen_len", "depth", "flash_attn", "metric", "value", "stat", "source_id", "url",
                "location", "date_published", "notes"]
EXTRA_COLUMNS = ["gguf_type", "gguf_bits_per_weight", "gguf_bits_per_weight_nominal", "model_file_gb",
                 "model_params", "weight_bytes_read", "build_flags", "gpu_name", "gpu_uuid", "driver", "cuda",
                 "commit", "date_utc", "weights", "copy_bw_gbps", "peak_tflops_bf16", "roofline_value",
                 "roofline_frac", "roofline_flag", "avg_power_w", "j_per_token", "n_reps", "samples",
                 "cpu_job_concurrent", "status", "reason"]
COLUMNS = BASE_COLUMNS + EXTRA_COLUMNS

# nominal bits per weight of the type's main block format (K-quant mixes: their base type)
NOMINAL_BPW = {"F16": 16.0, "BF16": 16.0, "F32": 32.0, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K_M": 5.5,
               "Q5_K_S": 5.5, "Q4_K_M": 4.5, "Q4_K_S": 4.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5,
               "IQ4_XS": 4.25, "IQ4_NL": 4.5, "Q3_K_M": 3.4375, "Q2_K": 2.625}
KV_NAMES = {"f16": FP16, "q8_0": "q8_0", "q4_0": "q4_0", "f32": "fp32", BF16: BF16}  # llama.cpp type -> kv_dtype


def precision_id(qtype: str) -> str:
    return "gguf-" + qtype.lower()


# --------------------------------------------------------------------------------------------- deadline
class Deadline:
    """Wall-clock budget for one device call. ``allows(est)`` before each step: is there time for a
    step estimated at ``est`` seconds plus the reserve kept for writing results?"""

    def __init__(self, budget_s: float, reserve_s: float = 15.0, clock=time.monotonic):
        self.clock = clock
        self.t0 = clock()
        self.budget_s = float(budget_s)
        self.reserve_s = float(reserve_s)

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def allows(self, est_s: float) -> bool:
        return self.remaining() - self.reserve_s >= est_s

    def timeout_for(self, est_s: float, slack: float = 3.0, floor: float = 20.0) -> float:
        """Subprocess timeout: generous against the estimate, never past the budget's reserve."""
        return max(1.0, min(max(est_s * slack, floor), self.remaining() - self.reserve_s))


# --------------------------------------------------------------------------------------------- model facts
@dataclass
class ModelFacts:
    """What the roofline needs about one GGUF file (from its tensor table and the architecture)."""
    model: str
    qtype: str
    file_bytes: int
    tensor_bytes: int  # all tensors (llama-bench's model_size)
    embd_bytes: int  # token_embd.weight
    tied: bool
    n_params: int
    block_params: int
    head_params: int
    layers: int
    heads: int
    head_dim: int
    kv_heads: int

    @property
    def weight_bytes_read(self) -> float:
        """Bytes one decode step reads: every tensor once, but the untied embedding (only gathered)."""
        return self.tensor_bytes - (0 if self.tied else self.embd_bytes)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / self.n_params

    def kv_bytes_per_token(self, kv: str) -> float:
        per = {"f16": 2.0, FP16: 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "f32": 4.0}[kv]
        return 2 * self.layers * self.kv_heads * self.head_dim * per

    def attn_flops_per_token(self, ctx: float) -> float:
        return 4.0 * ctx * self.layers * self.heads * self.head_dim


def roofline(f: ModelFacts, metric: str, batch: int, prompt_len: int, gen_len: int, depth: int, kv: str,
             bw_gbps: float, peak_tflops: float, ubatch: int = 512) -> float:
    """Upper bound on ``metric`` (tokens/s) for that row; see the module docstring."""
    bw, peak = bw_gbps * 1e9, peak_tflops * 1e12
    if metric == "prefill_tok_s":
        ctx = depth + prompt_len / 2.0
        flops = 2.0 * f.block_params + f.attn_flops_per_token(ctx)
        mem = bw * min(ubatch, max(1, batch * prompt_len)) / f.weight_bytes_read
        return min(peak / flops, mem)
    # decode: average context over the generated tokens
    ctx = depth + prompt_len + gen_len / 2.0
    bytes_step = f.weight_bytes_read + batch * ctx * f.kv_bytes_per_token(kv)
    flops_tok = 2.0 * (f.block_params + f.head_params) + f.attn_flops_per_token(ctx)
    per_seq = min(bw / bytes_step, peak / (batch * flops_tok))
    if metric == "decode_tok_s":
        return per_seq
    if metric == "output_tok_s":
        return per_seq * batch
    raise ValueError(metric)


def median_after_warmup(samples: list[float]) -> tuple[float, list[float]]:
    kept = list(samples[1:]) if len(samples) > 1 else list(samples)
    return statistics.median(kept), kept


# --------------------------------------------------------------------------------------------- parsing
@dataclass
class Measured:
    """One figure before provenance is attached."""
    metric: str
    value: float
    batch: int
    prompt_len: int | None
    gen_len: int | None
    depth: int
    kv: str
    n_reps: int
    samples: list[float]
    window_s: float  # seconds the measured work took (energy window ends when the line arrived)
    tokens: float  # tokens produced/processed in that window (for J/token)
    location: str
    power_w: float | None = None  # average GPU power over the measured window (NVML energy counter)
    cpu_job: bool = False  # a CPU-heavy job (quantization) ran on other cores meanwhile
    split: str = "none"  # llama.cpp --split-mode: none (one GPU), layer or row


def parse_llama_bench_record(rec: dict, location: str = "llama-bench") -> list[Measured]:
    """One llama-bench JSON/JSONL test record -> one Measured (pp -> prefill, tg -> decode, pg -> both
    are not separable, so pp+tg records are skipped)."""
    n_p, n_g, d = int(rec.get("n_prompt", 0)), int(rec.get("n_gen", 0)), int(rec.get("n_depth", 0) or 0)
    if n_p and n_g:
        return []
    ts = [float(x) for x in rec.get("samples_ts") or []]
    ns = [float(x) for x in rec.get("samples_ns") or []]
    if not ts and rec.get("avg_ts"):
        ts = [float(rec["avg_ts"])]
    if not ts:
        return []
    val, kept = median_after_warmup(ts)
    kept_ns = ns[1:] if len(ns) > 1 else ns
    window = sum(kept_ns) / 1e9 if kept_ns else 0.0
    kv = str(rec.get("type_k", "f16"))
    split = str(rec.get("split_mode", "none"))
    where = f" -sm {split}" if split != "none" else ""
    if n_p:
        return [Measured("prefill_tok_s", val, 1, n_p, None, d, kv, len(kept), kept, window, n_p * len(kept),
                         f"{location} pp{n_p}" + (f" @ d{d}" if d else "") + where, split=split)]
    return [Measured("decode_tok_s", val, 1, None, n_g, d, kv, len(kept), kept, window, n_g * len(kept),
                     f"{location} tg{n_g}" + (f" @ d{d}" if d else "") + where, split=split)]


def parse_llama_bench_output(text: str) -> list[dict]:
    """llama-bench ``-o json`` (a JSON array) or ``-o jsonl`` (one object a line) -> records."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


_BB_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|"
                     r"\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*$")


def parse_batched_bench_line(line: str) -> dict | None:
    """One result line of llama-batched-bench (markdown table row or ``--output-format jsonl``)."""
    line = line.strip()
    if line.startswith("{"):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            return None
        return r if "pl" in r and "speed_tg" in r else None
    m = _BB_ROW.match(line)
    if not m:
        return None
    pp, tg, pl, n_kv = (int(m.group(i)) for i in range(1, 5))
    t_pp, s_pp, t_tg, s_tg, t, s = (float(m.group(i)) for i in range(5, 11))
    return {"pp": pp, "tg": tg, "pl": pl, "n_kv": n_kv, "t_pp": t_pp, "speed_pp": s_pp, "t_tg": t_tg,
            "speed_tg": s_tg, "t": t, "speed": s}


def parse_batched_bench_output(text: str) -> list[dict]:
    return [r for r in (parse_batched_bench_line(x) for x in text.splitlines()) if r]


def batched_rows(records: list[dict], kv: str = "f16", location: str = "llama-batched-bench",
                 split: str = "none") -> list[Measured]:
    """Group repeated (pp, tg, pl) records; median after dropping each configuration's first run.

    Gives prefill_tok_s (all prompts), output_tok_s (all sequences) and decode_tok_s (per sequence).
    Records may carry ``power_pp`` / ``power_tg`` (W over that phase) and ``cpu_job``; a row's power is
    the median over the kept runs."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((int(r["pp"]), int(r["tg"]), int(r["pl"])), []).append(r)
    out = []

    def med(xs):
        xs = [float(x) for x in xs if x is not None and x != ""]
        return statistics.median(xs) if xs else None

    for (pp, tg, pl), rs in groups.items():
        kept_r = rs[1:] if len(rs) > 1 else rs
        spp, kept_pp = median_after_warmup([float(r["speed_pp"]) for r in rs])
        stg, kept_tg = median_after_warmup([float(r["speed_tg"]) for r in rs])
        tpp = med([float(r["t_pp"]) for r in kept_r])
        ttg = med([float(r["t_tg"]) for r in kept_r])
        ppw, tgw = med([r.get("power_pp") for r in kept_r]), med([r.get("power_tg") for r in kept_r])
        cpu = any(bool(r.get("cpu_job")) for r in kept_r)
        loc = f"{location} npp{pp} ntg{tg} npl{pl}" + (f" -sm {split}" if split != "none" else "")
        out.append(Measured("prefill_tok_s", spp, pl, pp, None, 0, kv, len(kept_pp), kept_pp, tpp, pl * pp, loc,
                            ppw, cpu, split))
        out.append(Measured("output_tok_s", stg, pl, pp, tg, 0, kv, len(kept_tg), kept_tg, ttg, pl * tg, loc,
                            tgw, cpu, split))
        out.append(Measured("decode_tok_s", stg / pl, pl, pp, tg, 0, kv, len(kept_tg), [x / pl for x in kept_tg],
                            ttg, pl * tg, loc, tgw, cpu, split))
    return out


# --------------------------------------------------------------------------------------------- rows
def make_row(m: Measured, facts: ModelFacts | None, ctx: dict, *, avg_power_w: float | None = None,
             status: str = "ok", reason: str = "", cpu_job: bool | None = None) -> dict:
    """Measured + facts + call context (engine_version, build_flags, gpu_*, copy_bw_gbps, peak_tflops_bf16,
    source_id, commit, command) -> one CSV row."""
    avg_power_w = m.power_w if avg_power_w is None else avg_power_w
    cpu_job = m.cpu_job if cpu_job is None else cpu_job
    row = {c: "" for c in COLUMNS}
    n_gpus = gpus_used(m.split, int(ctx.get("n_gpus", 1) or 1))
    row.update(engine=engine_id(), engine_version=ctx.get("engine_version", ""), gpu="h200", num_gpus=n_gpus,
               parallel=m.split if n_gpus > 1 else "none", model=ctx.get("model", facts.model if facts else ""),
               precision=precision_id(ctx.get("qtype", facts.qtype if facts else "")),
               kv_dtype=KV_NAMES.get(m.kv, m.kv), batch=m.batch, prompt_len=m.prompt_len if m.prompt_len else "",
               gen_len=m.gen_len if m.gen_len else "", depth=m.depth, metric=m.metric,
               flash_attn=ctx.get("flash_attn", "on"), value=_r(m.value), stat="median" if m.n_reps > 1 else "single",
               source_id=ctx.get("source_id", ""), url="",
               location=f"{m.location} | {ctx.get('command', '')}".strip(" |"), date_published=ctx.get("date", ""),
               notes=ctx.get("notes", "random weights; flash attention on; -ngl 99"),
               gguf_type=ctx.get("qtype", facts.qtype if facts else ""),
               build_flags=ctx.get("build_flags", ""), gpu_name=ctx.get("gpu_name", ""),
               gpu_uuid=ctx.get("gpu_uuid", ""), driver=ctx.get("driver", ""), cuda=ctx.get("cuda", ""),
               commit=ctx.get("commit", ""), date_utc=ctx.get("date_utc", ""), weights="random",
               copy_bw_gbps=_r(ctx.get("copy_bw_gbps")), peak_tflops_bf16=_r(ctx.get("peak_tflops_bf16")),
               n_reps=m.n_reps, samples=";".join(f"{x:.4g}" for x in m.samples),
               cpu_job_concurrent=int(bool(cpu_job)), status=status, reason=reason)
    q = row["gguf_type"]
    row["gguf_bits_per_weight_nominal"] = NOMINAL_BPW.get(q, "")
    if facts is not None:
        row.update(gguf_bits_per_weight=_r(facts.bits_per_weight, 4), model_file_gb=_r(facts.file_bytes / 1e9, 4),
                   model_params=facts.n_params, weight_bytes_read=int(facts.weight_bytes_read))
        bw, pk = ctx.get("copy_bw_gbps"), ctx.get("peak_tflops_bf16")
        if bw and pk and status == "ok" and m.value:
            # n GPUs: their aggregate bandwidth and matmul rate (a bound for both split modes)
            rv = roofline(facts, m.metric, m.batch, m.prompt_len or 0, m.gen_len or 0, m.depth, m.kv,
                          bw * n_gpus, pk * n_gpus, ubatch=int(ctx.get("ubatch", 512)))
            row["roofline_value"] = _r(rv)
            frac = m.value / rv
            row["roofline_frac"] = _r(frac, 4)
            row["roofline_flag"] = "ABOVE_ROOFLINE" if frac > 1.0 else ""
    if avg_power_w and m.value and status == "ok":
        row["avg_power_w"] = _r(avg_power_w)
        # J per token of this row's own stream: per-sequence decode counts all sequences' tokens
        rate = m.value * (m.batch if m.metric == "decode_tok_s" else 1)
        row["j_per_token"] = _r(avg_power_w / rate, 5)
    return row


def gpus_used(split: str, visible: int) -> int:
    """GPUs a llama.cpp run uses: one with ``-sm none``, every visible one otherwise."""
    return 1 if split in ("none", "", None) else max(1, visible)


def status_row(ctx: dict, status: str, reason: str, metric: str = "", **fields) -> dict:
    row = {c: "" for c in COLUMNS}
    row.update(engine=engine_id(), engine_version=ctx.get("engine_version", ""), gpu="h200", num_gpus=1,
               parallel="none", model=ctx.get("model", ""), precision=precision_id(ctx.get("qtype", "")),
               gguf_type=ctx.get("qtype", ""), metric=metric, source_id=ctx.get("source_id", ""),
               location=ctx.get("command", ""), date_published=ctx.get("date", ""),
               build_flags=ctx.get("build_flags", ""), gpu_name=ctx.get("gpu_name", ""),
               gpu_uuid=ctx.get("gpu_uuid", ""), driver=ctx.get("driver", ""), cuda=ctx.get("cuda", ""),
               commit=ctx.get("commit", ""), date_utc=ctx.get("date_utc", ""), weights="random",
               status=status, reason=reason[:300])
    row.update({k: v for k, v in fields.items() if k in row})
    return row


def _r(x, nd: int = 6):
    if x is None or x == "":
        return ""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return x
    if not math.isfinite(x):
        return ""
    return float(f"{x:.{nd}g}")


class RowWriter:
    """Appends rows to a CSV the moment they exist (flush + fsync), header once."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.f = open(self.path, "a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            self.w.writeheader()
        self.n = 0

    def write(self, row: dict):
        self.w.writerow(row)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.n += 1

    def close(self):
        self.f.close()


# --------------------------------------------------------------------------------------------- energy
def energy_between(samples: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    """Joules between t0 and t1 from (time_s, energy_mJ) counter samples (linear interpolation)."""
    if len(samples) < 2 or t1 <= t0:
        return None
    ts = [s[0] for s in samples]
    if t0 < ts[0] or t1 > ts[-1] + 0.5:
        return None

    def at(t):
        if t >= ts[-1]:
            return samples[-1][1]
        lo, hi = 0, len(ts) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ts[mid] <= t:
                lo = mid
            else:
                hi = mid
        (ta, ea), (tb, eb) = samples[lo], samples[hi]
        return ea + (eb - ea) * (t - ta) / (tb - ta) if tb > ta else ea

    return (at(t1) - at(t0)) / 1000.0
