"""What the quality campaign measures: :func:`plan` lists every configuration (precision, sparsity, KV
policy, KV budget in tokens, metric), most important first, so a deadline cuts the tail; and the
training candidates (``dropout:steps``) that ``--train`` tries (:func:`parse_candidates`).

The sweep itself is data: ``plan.yaml`` beside this module (the lists below, the precision variants that are
not catalog ids, the precisions with the campaign's own GPTQ). The reference configuration every delta is
taken against is the catalog's default precision, sparsity and KV cache (:func:`base`).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PLAN_PATH = Path(__file__).with_name("plan.yaml")


def _load(path: Path = PLAN_PATH) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


_PLAN = _load()
PRECISIONS: list[str] = _PLAN["precisions"]
SPARSITIES: list[str] = _PLAN["sparsities"]
KV_QUANT: list[str] = _PLAN["kv_quant"]
KV_EVICT: list[str] = _PLAN["kv_evict"]
KV_BUDGETS: list[int] = _PLAN["kv_budgets"]
COMBOS = [tuple(c) for c in _PLAN["combos"]]
KV_COMBOS = [tuple(c) for c in _PLAN["kv_combos"]]
VARIANTS: dict[str, dict] = _PLAN["variants"]  # row name -> {method, calibration, simulate[, doc]}
GPTQ_FALLBACK: list[str] = _PLAN["gptq_fallback"]


@lru_cache(maxsize=1)
def _base() -> tuple[tuple[str, str], ...]:
    from profiles import load

    cat = load()
    return tuple((k, cat.default_method(k)) for k in ("precision", "sparsity", "kv"))


def base() -> dict:
    """The reference configuration: the catalog's default precision, sparsity and KV cache (no method applied)."""
    return dict(_base())


def is_base(spec: dict) -> bool:
    """Whether a plan entry or row measures the reference configuration (with any metric)."""
    return all(spec[k] == v for k, v in _base())


def variant_docs() -> list[str]:
    """How the CSV sidecar describes the precision variants that have a ``doc`` in plan.yaml."""
    return [f"{name} = apply_precision('{v['method']}'" + (", simulate=True" if v["simulate"] else "") + ")"
            + ("" if v["calibration"] else " without calibration") + f" ({v['doc']})"
            for name, v in VARIANTS.items() if v.get("doc")]


def plan(kv_budgets=KV_BUDGETS) -> list[dict]:
    """Every measured configuration, most important first (a deadline cuts the tail)."""
    ref = base()

    def P(p, s=ref["sparsity"], kv=ref["kv"], b=None, metric="ppl"):
        return dict(precision=p, sparsity=s, kv=kv, kv_budget=b, metric=metric)

    p0 = ref["precision"]
    out = [P(p0)]
    out += [P(p) for p in PRECISIONS]
    out += [P(p0, s) for s in SPARSITIES]
    out += [P(p0, metric="ppl_decode")]
    out += [P(p0, kv=k, metric="ppl_decode") for k in KV_QUANT]
    out += [P(p0, kv=k, b=b, metric="ppl_decode") for k in KV_EVICT for b in kv_budgets]
    out += [P(p0, kv=k, metric="ppl_decode_res0") for k in KV_QUANT]
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
