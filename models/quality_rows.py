"""Published and measured quality rows, as the quality cost model reads them: the three quantities
(relative perplexity increase, task-accuracy drop, long-context drop), each row's loss with the interval its
printed precision allows, and the one component a row varies (precision, sparsity or KV policy)."""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .candidate import DEFAULT_KV, DEFAULT_SPARSITY, DROP_LAYERS


def _catalog_sets() -> tuple[set, set, set]:
    """From profiles/data/methods.yaml: the unquantized precisions (those with a ``torch_dtype``), the
    precisions marked ``quality_llama3_sensitive``, and the KV eviction policies (those with token
    ``budgets``)."""
    from profiles import load
    cat = load()
    plain = {m.id for m in cat.methods_of("precision") if m.get("torch_dtype")}
    sensitive = {m.id for m in cat.methods_of("precision") if m.get("quality_llama3_sensitive")}
    evict = {m.id for m in cat.methods_of("kv") if m.get("budgets")}
    return plain, sensitive, evict


_PLAIN, _SENSITIVE, _EVICT = _catalog_sets()
# The 16-bit reference of a row: an unquantized precision; a KV column naming the catalog's default cache,
# or the 16-bit cache by the model's dtype (fp16 / bf16, as the published tables do).
BASE_PRECISIONS = set(_PLAIN)
BASE_KV = {DEFAULT_KV} | _PLAIN
METRIC_RANK = {"wikitext2_ppl": 0, "c4_ppl": 1, "pg19_ppl": 2, "longbench_avg": 6, "mmlu": 7,
               "openllm_v1_avg": 7, "zeroshot5_avg_acc": 8, "zeroshot4_avg_acc": 8, "gsm8k": 8, "needle_acc": 9}
SCORE_METRICS = {"longbench_avg", "mmlu", "openllm_v1_avg", "zeroshot5_avg_acc", "zeroshot4_avg_acc",
                 "gsm8k", "needle_acc"}
# The three quality quantities (issue 11): a relative perplexity increase (fraction), a task-accuracy
# drop and a long-context score drop (both in points of the 0-100 score). Rows of one never answer another.
PPL, ACC, LONG = "ppl_delta", "accuracy_drop", "longctx_drop"
KINDS = (PPL, ACC, LONG)
LONGCTX_METRICS = {"longbench_avg", "needle_acc", "ruler_avg", "ruler"}
ACCURACY_METRICS = {"mmlu", "openllm_v1_avg", "zeroshot5_avg_acc", "zeroshot4_avg_acc", "zeroshot7_avg_acc", "gsm8k",
                    "cmmlu", "laco13_avg", "hellaswag", "mmlu_nsub10", "openllm_v1_subset_avg", "humaneval_python_en",
                    "humaneval_python_cn"}


def metric_kind(metric: str) -> str | None:
    """ppl_delta | accuracy_drop | longctx_drop, or None for rows that are not quality (throughput...)."""
    m = metric.lower()
    if m.endswith("_ppl") or m in ("ppl", "ppl_decode"):
        return PPL
    if m in LONGCTX_METRICS:
        return LONG
    if m in ACCURACY_METRICS:
        return ACC
    return None


def _half_unit(x) -> float:
    """Half a unit in the last printed place of a published figure (8.3 -> 0.05; 62 -> 0.5)."""
    t = repr(float(x)) if not isinstance(x, str) else x
    if "e" in t.lower():
        return 0.0
    dec = len(t.split(".")[1].rstrip("0")) if "." in t else 0
    return 0.5 * 10 ** (-dec)


def row_loss(kind: str, baseline: float, value: float, exact: bool = False) -> tuple[float, float, float]:
    """(loss, low, high) of one published pair; low/high carry +/- half a unit in the last printed place on
    both figures (WikiText-2 8.3 vs 8.2 is 0.0-2.4%, not 1.2%). ppl_delta: relative increase (fraction);
    score kinds: points dropped."""
    b, v = float(baseline), float(value)
    hb, hv = (0.0, 0.0) if exact else (_half_unit(baseline), _half_unit(value))
    if kind == PPL:
        return (v - b) / b, (v - hv) / (b + hb) - 1, (v + hv) / max(b - hb, 1e-9) - 1
    return b - v, (b - hb) - (v + hv), (b + hb) - (v - hv)


# Llama 3 taken as LLAMA3_FACTOR x as sensitive as Llama 2 to these methods (Huang et al. 2024, "How Good Are
# Low-bit Quantized LLaMA3 Models?", https://arxiv.org/abs/2404.14047): the catalog's precisions marked
# quality_llama3_sensitive, and round-to-nearest int4, a label of published rows outside the catalog.
LLAMA3_SENSITIVE = _SENSITIVE | {"rtn-int4", "gptq-int4-noreorder"}
LLAMA3_FACTOR = 2.0
EVICTION = set(_EVICT)
SMALL_MODEL_CSV = Path(__file__).resolve().parent.parent / "measurement" / "data" / "quality" / "small_model_quality.csv"

# Half-width of the interval, relative to the loss, by rule; and an absolute floor (fraction).
REL_WIDTH = {"exact": 0.25, "variant": 0.4, "family": 0.6, "transfer": 1.0, "measured-small": 2.0}
# Below these a loss is within what published tables resolve (rounding, run-to-run noise): interval
# half-widths are relative to max(|loss|, floor), the same floor where they are calibrated and applied.
WIDTH_FLOOR = {"ppl_delta": 0.01, "score": 1.0}


def rule_width(widths: dict, kind: str, rule: str) -> tuple[float, bool]:
    """A lookup rule's relative half-width for quantity ``kind``: the one calibrated on held-out papers
    (``calibrate_widths``; per kind where it has one), else REL_WIDTH's stated default; and whether it was
    calibrated."""
    calibrated = widths.get(f"{kind}/{rule}", widths.get(rule))
    return (REL_WIDTH.get(rule, 1.0), False) if calibrated is None else (calibrated, True)


def width_floor(kind: str) -> float:
    """The loss below which an interval's half-width stops shrinking (fraction for ppl_delta, points else)."""
    return WIDTH_FLOOR.get(kind, WIDTH_FLOOR["score"])


@dataclass(frozen=True)
class Row:
    model: str
    family: str
    size_b: float | None
    component: tuple       # ("precision", id) | ("sparsity", id) | ("kv", id)
    budget: int | None
    metric: str
    loss: float            # relative, 0.01 = 1%
    cite: str
    source: str            # published | measured
    notes: str = ""
    kind: str = PPL        # ppl_delta | accuracy_drop | longctx_drop
    lo: float | None = None  # loss bounds from the printed precision of the figures
    hi: float | None = None
    context: int | None = None  # tokens of context the figure was evaluated at (seq_len), where stated


@dataclass(frozen=True)
class ComponentLoss:
    component: tuple
    loss: float
    low: float
    high: float
    rule: str
    metric: str
    cites: tuple
    # half-width of what the published figures themselves leave (their printed rounding and the spread of the
    # rows, at >= 0), without the rule's calibrated width; None for a figure no row prints (the regression)
    evidence_half: float | None = None


def _family_of(name: str) -> str:
    n = name.lower()
    for fam in ("llama3", "llama2", "qwen2.5", "qwen1.5", "mistral", "opt", "bloom"):
        if n.startswith(fam.replace("-", "")) or n.startswith(fam):
            return fam
    if n.startswith("deepseek-r1-distill-llama"):
        return "llama3"
    if n.startswith("llama-"):
        return "llama1"
    return n.split("-")[0]


def _size_of(name: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)([bm])(?![a-z])", name.lower())
    if not m:
        return None
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "m" else v


def training_tokens_t(family: str, size_b: float | None) -> float | None:
    """Pre-training tokens (trillions) of a model family at a size (billions), from quality_published.yaml
    ``training_tokens`` (cited there); None where the family does not state them."""
    from profiles.catalog import load_training_tokens

    for e in load_training_tokens():
        if e["family"] != family:
            continue
        lo, hi = e.get("min_size_b"), e.get("max_size_b")
        if size_b is None and (lo is not None or hi is not None):
            continue
        if (lo is None or size_b >= lo) and (hi is None or size_b < hi):
            return float(e["tokens_t"])
    return None


def _base_model(name: str) -> str:
    return re.sub(r"-(instruct|chat|it)$", "", name.lower())


def _component(r: dict) -> tuple | None:
    """The one component a row varies from the 16-bit dense baseline, or None for combinations."""
    prec = r["precision"]
    sp = r["sparsity"]
    kv = r["kv"]
    varied = []
    if prec not in BASE_PRECISIONS:
        varied.append(("precision", prec))
    if sp != DEFAULT_SPARSITY:
        varied.append(("sparsity", DROP_LAYERS if sp.startswith("drop-") else sp))
    if kv not in BASE_KV:
        varied.append(("kv", kv))
    return varied[0] if len(varied) == 1 else None


def _drop_fraction(r: dict) -> float | None:
    notes = str(r.get("notes", ""))
    m = re.search(r"(\d+)\s+layers total", notes) or re.search(r"\d+\s*(?:of|/)\s*(\d+)\s+(?:layers|blocks)", notes)
    n = int(r["sparsity"].split("-")[1])
    return n / int(m.group(1)) if m else None


def rows_from_published(raw: list[dict]) -> list[Row]:
    out = []
    for r in raw:
        if r.get("kind") == "claim" or r.get("baseline") in (None, 0):
            continue
        metric = r["metric"]
        kind = metric_kind(metric)
        if kind is None:
            continue
        comp = _component(r)
        if comp is None or "naive" in str(r.get("notes", "")).lower()[:40]:
            continue  # combinations, and naive baselines that a paper contrasts with its method
        budget = r.get("kv_budget")
        if comp[0] == "sparsity" and comp[1] == DROP_LAYERS:
            frac = _drop_fraction(r)
            if frac is None:
                continue
            budget = round(frac * 1000)  # per-mille of layers dropped, compared like a budget
        cite = f"{r['paper']}, {r.get('table') or ''} ({r['url']})"
        loss, lo, hi = row_loss(kind, r["baseline"], r["value"])
        out.append(Row(_base_model(r["model"]), _family_of(r["model"]), _size_of(r["model"]), comp, budget,
                       metric, loss, cite, "published", f"{r['paper']} {r.get('notes', '')}", kind, lo, hi,
                       r.get("seq_len")))
    return out


def rows_from_small_model(path: Path = SMALL_MODEL_CSV) -> list[Row]:
    if not path.exists():
        return []
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r.get("status", "ok") != "ok" or not r.get("delta_rel") or r["metric"].endswith("_res0") \
                    or r["precision"].endswith("-sim"):
                continue  # worst-case (no 16-bit residual) and simulated variants are not our methods
            comp = _component({"precision": r["precision"], "sparsity": r["sparsity"], "kv": r["kv"]})
            if comp is None:
                continue
            budget = int(float(r["kv_budget"])) if r.get("kv_budget") else None
            lo = float(r["delta_ci95_lo"]) if r.get("delta_ci95_lo") else float(r["delta_rel"])
            hi = float(r["delta_ci95_hi"]) if r.get("delta_ci95_hi") else float(r["delta_rel"])
            out.append(Row(r["model"], "small", _size_of(r["model"]), comp, budget, r["metric"], float(r["delta_rel"]),
                           f"measured on {r['model']} trained here ({r.get('gpu', '')}, {r.get('date_utc', '')})",
                           "measured", "", PPL, lo, hi))
    return out


def _metric_key(row: Row) -> int:
    return METRIC_RANK.get(row.metric, 5 if row.metric.endswith("_ppl") else 9)


def _pick_metric(rows: list[Row], metric: str | None = None) -> list[Row]:
    """Rows of ``metric`` where there are any (a perplexity increase is a quantity per dataset: the same
    4-bit model loses 14% on WikiText-2 and 0% on C4 in one table), else of the preferred metric."""
    same = [r for r in rows if r.metric == metric] if metric else []
    if same:
        return same
    best = min(_metric_key(r) for r in rows)
    return [r for r in rows if _metric_key(r) == best]


def rule_pools(rows: list[Row], llm) -> list[tuple[str, list[Row]]]:
    """The lookup rules' pools, in order: the model's own rows (exact), a same-family model within 15% of its
    size (variant), the family's rows (family: :func:`nearest_size` picks among them), every row (transfer)."""
    size = llm.published_params_b
    exact = [r for r in rows if r.model == llm.id or r.model == _base_model(llm.id)]
    variant = [r for r in rows if r.family == llm.family and r.size_b and abs(math.log(r.size_b / size)) < 0.15
               and r not in exact]
    family = [r for r in rows if r.family == llm.family]
    return [("exact", exact), ("variant", variant), ("family", family), ("transfer", rows)]


def nearest_size(rows: list[Row], size: float) -> list[Row]:
    """The rows of the size nearest ``size`` on a log scale (a row of no stated size counts as ``size``)."""
    near = min(abs(math.log((r.size_b or size) / size)) for r in rows)
    return [r for r in rows if abs(math.log((r.size_b or size) / size)) == near]
