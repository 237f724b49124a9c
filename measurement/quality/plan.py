"""What the quality campaign measures: :func:`plan` lists every configuration (precision, sparsity, KV
policy, KV budget in tokens, metric), most important first, so a deadline cuts the tail; and the
training candidates (``dropout:steps``) that ``--train`` tries (:func:`parse_candidates`).
"""
from __future__ import annotations

PRECISIONS = ["fp16", "fp8", "bnb-int8", "int8-wo", "w8a8", "bnb-nf4", "awq-int4", "rtn-int4", "gptq-int4",
              "rtn-int4-sim", "awq-int4-sim"]
SPARSITIES = ["2:4-magnitude", "2:4-wanda", "drop-1", "drop-2"]
KV_QUANT = ["kv-fp8", "kv-int8", "kv-int4", "kv-int2"]
KV_EVICT = ["streamingllm", "snapkv", "pyramidkv"]
KV_BUDGETS = [64, 128, 256]
COMBOS = [("awq-int4", "drop-1", "kv-fp16", None), ("bnb-nf4", "2:4-wanda", "kv-fp16", None),
          ("awq-int4", "2:4-wanda", "kv-fp16", None), ("int8-wo", "2:4-magnitude", "kv-fp16", None)]
KV_COMBOS = [("awq-int4", "dense", "kv-int8", None), ("awq-int4", "dense", "kv-int4", None),
             ("awq-int4", "dense", "snapkv", 128)]


def plan(kv_budgets=KV_BUDGETS) -> list[dict]:
    """Every measured configuration, most important first (a deadline cuts the tail)."""
    P = lambda p, s="dense", kv="kv-fp16", b=None, metric="ppl": dict(  # noqa: E731
        precision=p, sparsity=s, kv=kv, kv_budget=b, metric=metric)
    out = [P("bf16")]
    out += [P(p) for p in PRECISIONS]
    out += [P("bf16", s) for s in SPARSITIES]
    out += [P("bf16", metric="ppl_decode")]
    out += [P("bf16", kv=k, metric="ppl_decode") for k in KV_QUANT]
    out += [P("bf16", kv=k, b=b, metric="ppl_decode") for k in KV_EVICT for b in kv_budgets]
    out += [P("bf16", kv=k, metric="ppl_decode_res0") for k in KV_QUANT]
    out += [P(p, s, kv, b) for p, s, kv, b in COMBOS]
    out += [P(p, s, kv, b, metric="ppl_decode") for p, s, kv, b in KV_COMBOS]
    return out


TRAIN_CANDIDATES = "0.1:450,0.1:800,0.2:700,0.2:1200,0.3:1000,0.3:1600"


def parse_candidates(spec: str, default_steps: int) -> list[tuple[float, int]]:
    """'dropout:steps,...' (steps optional: --train-steps) -> [(dropout, steps)]."""
    out = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        d, _, st = part.partition(":")
        out.append((float(d), int(st) if st else default_steps))
    return out or [(0.1, default_steps)]
