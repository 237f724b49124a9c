"""The decision engine behind ``advisor recommend``.

Flow: (1) hardware support, (2) memory fit at the asked context and batch, (3) quality bound,
(4) minimum speed, then rank the survivors by the objective and keep the Pareto front of
(objective, quality loss). Every rejected candidate keeps the first constraint that blocked it.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field

from profiles import Catalog, default_engine_id, load

from models.candidate import DEFAULT_KV, DEFAULT_SPARSITY, Candidate, Scenario
from models.facade import predict
from models.predict import Prediction, fraction_needed, memory_budget
from models.quality import backs_a_bound
from models.quality_served import served as served_quality
from models.support import engine_block, enumerate_candidates

OBJECTIVES = ("throughput", "latency", "energy", "cost")
CONSTRAINTS = ("hardware", "memory", "quality", "speed")


class RequestError(ValueError):
    """The request itself is invalid (the CLI prints it and exits non-zero)."""


@dataclass(frozen=True)
class Request:
    gpu: str
    model: str
    max_quality_loss: float | None = None   # fraction: 0.02 = 2%
    context: int = 4096                     # tokens per sequence: prompt + generated
    batch: int = 1
    gen_len: int = 256
    objective: str = "throughput"
    min_tok_s: float | None = None          # per sequence (what one user sees)
    num_gpus: int = 1
    top: int = 5
    backend: str = "compiled"
    engine: str = field(default_factory=default_engine_id)  # an engine id, or "auto" to search the engines too
    max_accuracy_drop: float | None = None  # task-accuracy drop, points of a 0-100 score
    max_longctx_drop: float | None = None   # long-context score drop, points
    allow_unknown_quality: bool = False     # admit a candidate whose gated quality figure is unknown
    pin_precision: str | None = None        # only candidates with this precision (a method id)
    pin_sparsity: str | None = None         # ... this sparsity (dense, 2:4-*, drop-N)
    pin_kv: str | None = None               # ... this KV policy

    def quality_bounds(self) -> list[tuple[str, float, str]]:
        """(kind, bound, option) for every quality bound asked."""
        out = []
        for kind, v, opt in (("ppl_delta", self.max_quality_loss, "--max-ppl-delta"),
                             ("accuracy_drop", self.max_accuracy_drop, "--max-accuracy-drop"),
                             ("longctx_drop", self.max_longctx_drop, "--max-longctx-drop")):
            if v is not None:
                out.append((kind, v, opt))
        return out

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise RequestError(f"--objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        for name, v, lo in (("--context", self.context, 2), ("--batch", self.batch, 1), ("--gen-len", self.gen_len, 1),
                            ("--num-gpus", self.num_gpus, 1), ("--top", self.top, 1)):
            if not isinstance(v, int) or v < lo:
                raise RequestError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.gen_len >= self.context:
            raise RequestError(f"--gen-len ({self.gen_len}) must be smaller than --context ({self.context}), "
                               "which counts prompt and generated tokens together")
        if self.max_quality_loss is not None and not (0 <= self.max_quality_loss <= 1):
            raise RequestError(f"--max-ppl-delta must be between 0% and 100%, got {self.max_quality_loss * 100:.4g}%")
        for name, v in (("--max-accuracy-drop", self.max_accuracy_drop), ("--max-longctx-drop", self.max_longctx_drop)):
            if v is not None and not (0 <= v <= 100):
                raise RequestError(f"{name} must be between 0 and 100 points, got {v:.4g}")
        if self.min_tok_s is not None and self.min_tok_s <= 0:
            raise RequestError(f"--min-tokens-per-s must be positive, got {self.min_tok_s}")
        if self.backend not in ("compiled", "eager"):
            raise RequestError(f"--backend must be compiled or eager, got '{self.backend}'")


@dataclass
class Evaluated:
    prediction: Prediction
    rejected_by: str | None = None      # one of CONSTRAINTS
    reason: str | None = None
    rank: int | None = None
    pareto: bool = False
    lost_because: str | None = None

    @property
    def candidate(self) -> Candidate:
        return self.prediction.candidate


@dataclass
class Recommendation:
    request: Request
    gpu_id: str
    model_id: str
    notes: list[str]
    evaluated: list[Evaluated]
    hardware_rejected: list[tuple[Candidate, str]]
    best: Evaluated | None
    ranked: list[Evaluated]
    relaxations: list[str] = field(default_factory=list)

    def rejected(self, constraint: str) -> list:
        if constraint == "hardware":
            return self.hardware_rejected
        return [e for e in self.evaluated if e.rejected_by == constraint]


def objective_value(p: Prediction, objective: str) -> float | None:
    """Smaller is better for every objective (throughput is negated)."""
    if objective == "throughput":
        return -p.speed.decode_tok_s.value
    if objective == "latency":
        return p.request_latency_s.value
    if objective == "energy":
        return p.j_per_token.value
    return p.usd_per_mtok.value if p.usd_per_mtok else None


def resolve_engines(cat: Catalog, name: str) -> list[str]:
    """Engine ids a request searches: one, or every engine for 'auto'."""
    if str(name).strip().lower() == "auto":
        return list(cat.engines)
    return [cat.resolve("engine", name).id]


def resolve_pins(cat: Catalog, req) -> dict:
    """--precision / --sparsity / --kv as catalog ids (close matches on a typo; RequestError)."""
    from profiles import UnknownProfileError
    out = {}
    for opt, kind, v in (("precision", "precision", req.pin_precision), ("sparsity", "sparsity", req.pin_sparsity),
                           ("kv", "kv", req.pin_kv)):
        if v is None:
            continue
        if kind == "sparsity" and str(v).startswith("drop-"):
            if not str(v)[5:].isdigit():
                raise RequestError(f"--sparsity {v}: drop-N takes a number of layers, e.g. drop-8")
            out[opt] = str(v)
            continue
        try:
            mid = cat.resolve("method", v).id
            if kind == "kv" and cat.methods[mid].kind != "kv" and f"kv-{v}" in cat.methods:
                mid = f"kv-{v}"  # --kv fp8 means the KV method kv-fp8
        except UnknownProfileError as e:
            raise RequestError(f"--{opt} {v}: {e}") from None
        if cat.methods[mid].kind != kind:
            raise RequestError(f"--{opt} {v}: that is a {cat.methods[mid].kind} method, not a {kind}")
        out[opt] = mid
    return out


def _pinned(cand, pins: dict) -> bool:
    return all(getattr(cand, f) == v for f, v in pins.items())


def recommend(req: Request, cat: Catalog | None = None, speed_model=None) -> Recommendation:
    req.validate()
    cat = cat or load()
    engines = resolve_engines(cat, req.engine)
    notes = []
    rg = cat.resolve("gpu", req.gpu)
    if rg.note:
        notes.append(rg.note)
    gpu, llm = cat.gpus[rg.id], cat.llm(req.model)
    if req.context > llm.max_position_embeddings:
        arch = lambda m: (m.hidden_size, m.intermediate_size, m.num_hidden_layers, m.num_key_value_heads)  # noqa: E731
        longer = [m.id for m in cat.llms.values() if arch(m) == arch(llm) and m.max_position_embeddings >= req.context]
        raise RequestError(f"--context {req.context} exceeds {llm.id}'s max_position_embeddings "
                           f"({llm.max_position_embeddings}): no KV policy changes the positions the model was "
                           f"trained for." + (f" Same architecture with a longer context: {', '.join(longer)}."
                                              if longer else ""))
    if req.objective == "cost" and not gpu.cloud_usd_per_hour:
        raise RequestError(f"--objective cost needs a price: {gpu.id} has no cloud price in the catalog")
    sc = Scenario(batch=req.batch, prompt_len=req.context - req.gen_len, gen_len=req.gen_len,
                  backend=req.backend, num_gpus=req.num_gpus)
    pins = resolve_pins(cat, req)
    quality = served_quality(cat)
    evaluated, hw_rejected = [], []
    for eid in engines:
        eng = cat.engines[eid]
        notes.append(f"engine: {eng.name} {eng.version}")
        for cand in enumerate_candidates(cat, llm, req.context):
            if not _pinned(cand, pins):
                continue
            block = engine_block(cat, eng, gpu, llm, cand, req.num_gpus)
            if block:
                hw_rejected.append((cand, f"[{eid}] {block}" if len(engines) > 1 else block))
                continue
            p = predict(cat, gpu, llm, cand, sc, eid, quality, speed_model if eng.runs_everything else None)
            e = Evaluated(p)
            _apply_constraints(e, req, gpu.memory_gb)
            evaluated.append(e)
    feasible = [e for e in evaluated if e.rejected_by is None]
    feasible.sort(key=lambda e: (objective_value(e.prediction, req.objective),
                                 e.prediction.quality_loss.value if e.prediction.quality_loss else 1e9))
    _prefer_simple(feasible, req.objective)
    for i, e in enumerate(feasible, 1):
        e.rank = i
    _mark_pareto(feasible, req.objective)
    best = feasible[0] if feasible else None
    if best:
        for e in feasible[1:]:
            e.lost_because = _why_lost(e, best, req.objective)
    if best and len(engines) > 1:
        notes.append(_engine_verdict(feasible, req.objective))
    rec = Recommendation(req, gpu.id, llm.id, notes, evaluated, hw_rejected, best, feasible)
    if not best:
        rec.relaxations = relaxations(rec, cat)
    return rec


def _engine_verdict(feasible: list[Evaluated], objective: str) -> str:
    """Which engine won --engine auto, against the best candidate of each other engine."""
    best = feasible[0]
    per = {}
    for e in feasible:
        per.setdefault(e.prediction.engine, e)
    others = [f"{k} best {v.candidate.short} at {_objective_text(v.prediction, objective)}"
              for k, v in per.items() if k != best.prediction.engine]
    return (f"engine auto: {best.prediction.engine} won with {best.candidate.short} at "
            f"{_objective_text(best.prediction, objective)}" + ("; " + "; ".join(others) if others else
                                                                "; no other engine had a feasible candidate"))


def _objective_text(p: Prediction, objective: str) -> str:
    if objective == "throughput":
        return f"{p.speed.decode_tok_s.value:.4g} tok/s"
    if objective == "latency":
        return f"{p.request_latency_s.value:.3g} s per request"
    if objective == "energy":
        return f"{p.j_per_token.value:.3g} J/token"
    return f"{p.usd_per_mtok.value:.3g} USD/Mtok" if p.usd_per_mtok else "no price"


def _apply_constraints(e: Evaluated, req: Request, capacity_gb: float) -> None:
    p = e.prediction
    need = p.memory.per_gpu_gb.value
    usable, rule = memory_budget(p, capacity_gb)
    if need > usable:
        e.rejected_by, e.reason = "memory", (
            f"needs {need:.1f} GB per GPU > {usable:.3g} GB ({rule}) (weights {p.memory.weights_gb / req.num_gpus:.1f}, "
            f"KV {p.memory.kv_gb / req.num_gpus:.1f}, workspace+overhead "
            f"{p.memory.activations_gb / req.num_gpus + p.memory.overhead_gb:.1f})")
        return
    for kind, bound, opt in req.quality_bounds():
        est, _, missing = p.quality.get(kind, (None, [], []))
        unit = "%" if kind == "ppl_delta" else " points"
        k = 100 if kind == "ppl_delta" else 1
        small = est is not None and not backs_a_bound(est)  # only this project's tiny trained model
        if not backs_a_bound(est):
            has = [q for q, (x, _, _) in p.quality.items() if backs_a_bound(x)]
            why = (f"{kind} unknown: no published or transferred figure for "
                   f"{', '.join(c[1] for c in missing) if missing else est.detail}"
                   + (" (only measured on this project's small trained model, which does not carry to "
                      f"{req.model})" if small else "") + (f"; it has {', '.join(has)}" if has else ""))
            if req.allow_unknown_quality:
                p.notes.append(f"admitted by --allow-unknown-quality: {why}")
                continue
            e.rejected_by, e.reason = "quality", why + "; --allow-unknown-quality admits it"
            return
        if est.value > bound:
            e.rejected_by, e.reason = "quality", (
                f"predicted {kind} {est.value * k:.2f}{unit} > {opt} {bound * k:.2f}{unit} ({est.detail})")
            return
    if req.min_tok_s is not None and p.speed.per_seq_tok_s.value < req.min_tok_s:
        ceiling = 1e3 / p.speed.roofline_decode_ms
        e.rejected_by, e.reason = "speed", (
            f"predicted {p.speed.per_seq_tok_s.value:.1f} tok/s per sequence < {req.min_tok_s:g} (the memory-"
            f"bandwidth roofline caps it at {ceiling:.1f}: {p.memory.weights_gb:.1f} GB of weights"
            f"{' + KV' if p.memory.kv_gb else ''} read per token)")


TIE_TOLERANCE = 0.05  # objective values this close count as a tie (far inside any speed interval)


def _complexity(c: Candidate) -> int:
    """Methods on top of the plain model: quantized weights (no torch_dtype), pruning, a non-default KV cache."""
    quantized = not load().methods[c.precision].get("torch_dtype")
    return quantized + (c.sparsity != DEFAULT_SPARSITY) + (c.kv != DEFAULT_KV)


def _prefer_simple(feasible: list[Evaluated], objective: str) -> None:
    """Among candidates tied with the best (within TIE_TOLERANCE), put the simplest first:
    an extra method that buys under 5% should not be recommended over one that does without."""
    if not feasible:
        return
    top = objective_value(feasible[0].prediction, objective)
    tied = [e for e in feasible if abs(objective_value(e.prediction, objective) - top) <= abs(top) * TIE_TOLERANCE]
    tied.sort(key=lambda e: (_complexity(e.candidate),
                             e.prediction.quality_loss.value if e.prediction.quality_loss else 1e9))
    feasible[:len(tied)] = tied


def _mark_pareto(feasible: list[Evaluated], objective: str) -> None:
    best_loss = float("inf")
    for e in feasible:  # sorted by objective
        loss = e.prediction.quality_loss.value if e.prediction.quality_loss else float("inf")
        if loss < best_loss:
            e.pareto, best_loss = True, loss


def _why_lost(e: Evaluated, best: Evaluated, objective: str) -> str:
    p, b = e.prediction, best.prediction
    if objective_value(p, objective) <= objective_value(b, objective):
        nb, ne = _complexity(best.candidate), _complexity(e.candidate)
        if nb < ne:
            return (f"within {TIE_TOLERANCE:.0%} of the recommendation, which uses fewer methods "
                    f"({nb} vs this one's {ne})")
        lb = b.quality_loss.value if b.quality_loss else None
        le = p.quality_loss.value if p.quality_loss else None
        if lb is not None and le is not None:
            return (f"within {TIE_TOLERANCE:.0%} of the recommendation, which loses less quality "
                    f"({lb * 100:.2f}% vs this one's {le * 100:.2f}%)")
        return f"within {TIE_TOLERANCE:.0%} of the recommendation (a tie; ranked after it)"
    if objective == "throughput":
        r = p.speed.decode_tok_s.value / b.speed.decode_tok_s.value
        why = f"{r:.2f}x the recommendation's throughput"
    elif objective == "latency":
        why = f"request latency {p.request_latency_s.value:.2f} s vs {b.request_latency_s.value:.2f} s"
    elif objective == "energy":
        why = f"{p.j_per_token.value:.3g} J/token vs {b.j_per_token.value:.3g}"
    else:
        why = f"{p.usd_per_mtok.value:.3g} vs {b.usd_per_mtok.value:.3g} USD/Mtok"
    extra = [n for n in p.speed.notes if "CUDA graphs" in n or "dequantize" in n or "padded" in n]
    if e.pareto and e is not best:
        why += "; on the Pareto front (less quality loss)"
    return why + (f" ({extra[0]})" if extra else "")


def relaxations(rec: Recommendation, cat: Catalog) -> list[str]:
    """The nearest change of each constraint that would make some candidate feasible."""
    req = rec.request
    out = []
    ev = rec.evaluated
    if not ev:
        return [f"no candidate runs on {rec.gpu_id} at all: see the hardware reasons"]
    fits = [e for e in ev if e.rejected_by != "memory"]
    if not fits:
        smallest = min(ev, key=lambda e: e.prediction.memory.per_gpu_gb.value)
        need = smallest.prediction.memory.per_gpu_gb.value * req.num_gpus
        bigger = sorted((g for g in cat.gpus.values() if g.memory_gb * req.num_gpus >= need * 1.0),
                        key=lambda g: g.memory_gb)[:3]
        out.append(f"memory: the smallest candidate ({smallest.candidate.label}) needs "
                   f"{smallest.prediction.memory.per_gpu_gb.value:.1f} GB per GPU; try --num-gpus "
                   f"{req.num_gpus + 1}, a shorter --context, or a GPU with more memory"
                   + (f" ({', '.join(g.id for g in bigger)})" if bigger else ""))
    mem_q = [e for e in ev if e.rejected_by == "memory" and (req.max_quality_loss is None or (
        backs_a_bound(e.prediction.quality_loss) and e.prediction.quality_loss.value <= req.max_quality_loss))]
    if mem_q:
        e = min(mem_q, key=lambda e: e.prediction.memory.per_gpu_gb.value)
        p = e.prediction
        need, cap = p.memory.per_gpu_gb.value, cat.gpus[rec.gpu_id].memory_gb
        frac = fraction_needed(p, cap)
        roof = 1e3 / p.speed.roofline_decode_ms
        out.append(f"memory: the smallest candidate within the quality bound ({e.candidate.label} on {p.engine}) needs "
                   f"{need:.1f} GB per GPU, {need / cap:.0%} of the {cap:g} GB card ({memory_budget(p, cap)[1]})"
                   + (f": an engine memory fraction of {min(0.99, frac + 0.01):.2f} would admit it" if frac < 0.99
                      else "")
                   + f", or --num-gpus {req.num_gpus * 2}; it would run at {p.speed.per_seq_tok_s.value:.1f} tok/s "
                   f"per sequence (interval {p.speed.per_seq_tok_s.low:.1f}-{p.speed.per_seq_tok_s.high:.1f}; the "
                   f"bandwidth roofline, {p.memory.weights_gb:.1f} GB read per token, caps it at {roof:.1f})")
    q_ok = [e for e in fits if e.rejected_by != "quality"]
    if fits and not q_ok and req.max_quality_loss is not None:
        # only a figure that may pass a bound can be relaxed to; one known only from the small model
        # trained here (or not at all) needs --allow-unknown-quality whatever the bound
        known = [e for e in fits if backs_a_bound(e.prediction.quality_loss)]
        if known:
            e = min(known, key=lambda e: e.prediction.quality_loss.value)
            out.append(f"quality: the least lossy candidate that fits ({e.candidate.label}) loses "
                       f"{e.prediction.quality_loss.value * 100:.2f}%: --max-ppl-delta "
                       f"{e.prediction.quality_loss.value * 100 + 0.01:.2f}% would admit it")
        unknown = [e for e in fits if not backs_a_bound(e.prediction.quality_loss)
                   and (not known or e.prediction.speed.per_seq_tok_s.value
                        > max(k.prediction.speed.per_seq_tok_s.value for k in known))]
        if unknown:
            e = min(unknown, key=lambda e: (e.prediction.quality_loss.value if e.prediction.quality_loss else math.inf,
                                            -e.prediction.speed.per_seq_tok_s.value))
            out.append(f"quality: {e.candidate.label} fits and is faster, but no published figure backs its quality "
                       "(--allow-unknown-quality admits it, with a warning)")
    s_block = [e for e in ev if e.rejected_by == "speed"]
    if s_block:
        e = max(s_block, key=lambda e: e.prediction.speed.per_seq_tok_s.value)
        ceiling = req.batch * 1e3 / e.prediction.speed.roofline_decode_ms / req.batch
        out.append(f"speed: the fastest candidate meeting memory and quality ({e.candidate.label}) is predicted "
                   f"at {e.prediction.speed.per_seq_tok_s.value:.1f} tok/s per sequence (interval "
                   f"{e.prediction.speed.per_seq_tok_s.low:.1f}-{e.prediction.speed.per_seq_tok_s.high:.1f}; "
                   f"the bandwidth roofline caps it at {ceiling:.1f}): "
                   f"--min-tokens-per-s {e.prediction.speed.per_seq_tok_s.value:.1f} would admit it, or a GPU "
                   f"with more memory bandwidth")
    return out
