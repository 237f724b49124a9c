"""Capacity planning (`advisor plan`) and procurement comparison (`advisor compare`).

plan: for each GPU type, the cheapest way to serve ``qps`` requests/s of ``prompt_len`` + ``gen_len``
tokens within TTFT and TPOT p95 targets: method, concurrency per replica, tensor-parallel degree,
replicas, GPUs, $/month, kWh/month (and CO2 when a grid intensity is given), using the continuous
batching + queueing model of :mod:`models.serving`.
compare: per GPU, the cheapest method at a quality bound: $ per million tokens, tokens per joule and
payback of buying the card against renting it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from profiles import Catalog, default_engine_id, load

from models.candidate import Candidate, Scenario
from models.energy import idle_w as models_idle_w
from models.predict import energy_of, memory_budget
from models.facade import predict
from models.quality import backs_a_bound
from models.quality_served import served as served_quality
from models.serving import serving_latency
from models.speed import DEFAULT_LINK_GBPS
from models.support import engine_block

from .engine import RequestError, _pinned, resolve_engines, resolve_pins

HOURS_PER_MONTH = 730.0  # 8760 / 12
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TP_DEGREES = (1, 2, 4, 8)
MAX_REPLICAS = 100_000


MAX_QPS = 1e6        # requests/s: far beyond any fleet this planner sizes (MAX_REPLICAS caps it anyway)
MAX_TOKENS = 1 << 20  # prompt or generated tokens per request


@dataclass(frozen=True)
class PlanRequest:
    model: str
    qps: float
    prompt_len: int = 1024
    gen_len: int = 256
    ttft_p95_s: float = 1.0
    tpot_p95_s: float = 0.05
    gpus: tuple = ()
    max_quality_loss: float | None = 0.02
    grid_gco2_per_kwh: float | None = None
    backend: str = "compiled"
    max_accuracy_drop: float | None = None  # points of a 0-100 task score (as recommend's bound)
    engine: str = field(default_factory=default_engine_id)
    pin_precision: str | None = None
    pin_sparsity: str | None = None
    pin_kv: str | None = None

    def validate(self) -> None:
        if not (0 < self.qps <= MAX_QPS and math.isfinite(self.qps)):
            raise RequestError(f"--qps must be above 0 and at most {MAX_QPS:g} requests/s, got {self.qps:g}")
        for name, v in (("--prompt-len", self.prompt_len), ("--gen-len", self.gen_len)):
            if not isinstance(v, int) or not 1 <= v <= MAX_TOKENS:
                raise RequestError(f"{name} must be an integer from 1 to {MAX_TOKENS}, got {v!r}")
        for name, v, hi in (("--ttft-p95", self.ttft_p95_s, 3600.0), ("--tpot-p95", self.tpot_p95_s, 60.0)):
            if not (0 < v <= hi and math.isfinite(v)):
                raise RequestError(f"{name} must be above 0 and at most {hi:g} s, got {v:g} s")
        if self.max_accuracy_drop is not None and not (0 <= self.max_accuracy_drop <= 100):
            raise RequestError(f"--max-accuracy-drop must be between 0 and 100 points, got {self.max_accuracy_drop:g}")
        if self.grid_gco2_per_kwh is not None and not (0 <= self.grid_gco2_per_kwh <= 5000):
            raise RequestError(f"--grid-gco2-per-kwh must be between 0 and 5000 g/kWh, got {self.grid_gco2_per_kwh:g}")


@dataclass
class PlanOption:
    gpu: str
    candidate: str
    concurrency: int
    tp: int
    replicas: int
    gpus: int
    usd_per_month: float | None
    kwh_per_month: float
    co2_kg_per_month: float | None
    ttft_p95_s: float
    tpot_s: float
    slot_utilisation: float
    quality_loss: float | None
    interconnect: str
    engine: str = field(default_factory=default_engine_id)
    latency_model: str = "continuous batching + M/M/c slot queue (models/serving.py)"
    step_model: str = "analytical"
    j_per_token: float | None = None     # at the planned concurrency, while busy (models.predict.energy_of)
    power_w_per_gpu: float | None = None  # while busy


@dataclass
class GpuPlan:
    gpu: str
    best: PlanOption | None
    blocked: dict = field(default_factory=dict)  # constraint -> example reason


def _resolve_gpus(cat: Catalog, names) -> list[str]:
    if not names or list(names) == ["all"]:
        return [g.id for g in cat.gpus.values()]
    return [cat.resolve("gpu", n).id for n in names]


def _plan_candidates(cat: Catalog, engine: str) -> list[Candidate]:
    eng = cat.engines[engine]
    # the harness engine runs every KV policy; a capacity plan for it uses those the default serving engine offers
    serving = cat.engines[cat.default_engine]
    kvs = [k for k in cat.methods if cat.methods[k].kind == "kv" and not cat.methods[k].get("budgets")
           and (eng.runs_everything and serving.kv_entry(k) is not None
                or not eng.runs_everything and eng.kv_entry(k) is not None)]
    return [Candidate(p.id, kv=kv) for p in cat.methods_of("precision") for kv in kvs]


def _speed_mem(cat, gpu, llm, cand, sc, speed_model, engine, quality):
    """(speed, memory, label, (GB per GPU the engine may fill, its rule)) from the one cost-model facade."""
    p = predict(cat, gpu, llm, cand, sc, engine, quality, speed_model)
    return p.speed, p.memory, p.speed_model, memory_budget(p, gpu.memory_gb)


def plan(req: PlanRequest, cat: Catalog | None = None, speed_model=None) -> list[GpuPlan]:
    """Cheapest configuration per GPU type. ``speed_model``: a fitted cost model (or None)."""
    req.validate()
    cat = cat or load()
    llm = cat.llm(req.model)
    context = req.prompt_len + req.gen_len
    if context > llm.max_position_embeddings:
        raise RequestError(f"prompt + generation ({context}) exceeds {llm.id}'s context ({llm.max_position_embeddings})")
    quality = served_quality(cat)
    engines = resolve_engines(cat, req.engine)
    pins = resolve_pins(cat, req)
    out = []
    for gid in _resolve_gpus(cat, req.gpus):
        gpu = cat.gpus[gid]
        gp = GpuPlan(gid, None)
        price = gpu.cloud_usd_per_hour
        for engine, cand in ((e, c) for e in engines for c in _plan_candidates(cat, e) if _pinned(c, pins)):
            eng = cat.engines[engine]
            hb = engine_block(cat, eng, gpu, llm, cand)
            if hb:
                gp.blocked.setdefault("hardware", hb)
                continue
            loss, _, missing = quality.predict(llm, cand, context=context)
            if not backs_a_bound(loss):
                loss = None  # only this project's small trained model: no bound passes on it (as in recommend)
            if req.max_quality_loss is not None and (loss is None or loss.value > req.max_quality_loss):
                gp.blocked.setdefault("quality", f"{cand.label}: " + (
                    f"loss {loss.value * 100:.2f}% > bound" if loss else "no quality data"))
                continue
            if req.max_accuracy_drop is not None:
                acc = quality.predict(llm, cand, "accuracy_drop", context=context)[0]
                if not backs_a_bound(acc) or acc.value > req.max_accuracy_drop:
                    gp.blocked.setdefault("quality", f"{cand.label}: " + (
                        f"accuracy drop {acc.value:.2f} points > {req.max_accuracy_drop:g}" if backs_a_bound(acc)
                        else "no published accuracy-drop figure"))
                    continue
            sm = speed_model if eng.runs_everything else None
            for tp in TP_DEGREES:
                if engine_block(cat, eng, gpu, llm, cand, tp):
                    continue
                one = None
                for c in CONCURRENCY:
                    sc = Scenario(c, req.prompt_len, req.gen_len, req.backend, tp)
                    spd, memb, label, (usable, rule) = _speed_mem(cat, gpu, llm, cand, sc, sm, engine, quality)
                    mem = memb.per_gpu_gb.value
                    if mem > usable:
                        gp.blocked.setdefault("memory", f"{cand.label} at concurrency {c}, TP {tp}: {mem:.1f} GB > "
                                                        f"{usable:.3g} GB usable ({rule})")
                        break  # larger c needs more memory
                    if one is None:
                        one = _speed_mem(cat, gpu, llm, cand, Scenario(1, req.prompt_len, req.gen_len, req.backend,
                                                                       tp), sm, engine, quality)[0]
                    opt = _size_replicas(gpu, cand, sc, req, price, loss.value if loss else None, spd, one, label)
                    if not isinstance(opt, str):
                        opt.engine = engine
                    if isinstance(opt, str):
                        gp.blocked.setdefault("latency", opt)
                        continue
                    if gp.best is None or _key(opt) < _key(gp.best):
                        gp.best = opt
        out.append(gp)
    out.sort(key=lambda g: _key(g.best) if g.best else (math.inf, math.inf))
    return out


def _key(o: PlanOption):
    return (o.usd_per_month if o.usd_per_month is not None else math.inf, o.gpus)


def _size_replicas(gpu, cand, sc, req: PlanRequest, price, loss, spd, one, label: str):
    """Replicas for the load; ``spd`` at full concurrency, ``one`` for a single sequence's prefill."""
    t_pre = one.prefill_ms.value / 1e3
    tau0 = spd.decode_step_ms.value / 1e3
    t_req = one.request_ms / 1e3  # per request outside the GPU's forwards: adds to TTFT, occupies no GPU
    if tau0 > req.tpot_p95_s:
        return f"{cand.label} at concurrency {sc.batch}, TP {sc.num_gpus}: decode step {tau0 * 1e3:.1f} ms > TPOT target"
    if t_pre + tau0 + t_req > req.ttft_p95_s:
        return f"{cand.label}, TP {sc.num_gpus}: prefill {t_pre * 1e3:.0f} ms alone exceeds the TTFT target"
    # Smallest replica count meeting both targets (latency falls as load per replica falls).
    capacity = sc.batch / (req.gen_len * tau0)
    r = max(1, math.ceil(req.qps / capacity))
    while r <= MAX_REPLICAS:
        lat = serving_latency(req.qps / r, sc.batch, tau0, t_pre, req.gen_len)
        if lat.stable and lat.tau_s <= req.tpot_p95_s and lat.ttft_p95_s + t_req <= req.ttft_p95_s:
            break
        r = r + max(1, r // 8)
    else:
        return f"{cand.label}: no replica count up to {MAX_REPLICAS} meets the targets"
    gpus = r * sc.num_gpus
    util = min(1.0, lat.utilisation)
    busy_w = energy_of(gpu, spd, Scenario(sc.batch, sc.prompt_len, sc.gen_len, sc.backend, 1))[0]  # one GPU
    idle_w = models_idle_w(gpu)
    watts = gpus * (idle_w + (busy_w - idle_w) * util)
    kwh = watts * HOURS_PER_MONTH / 1000
    ic = gpu.interconnect
    gbps = ic.get("gpu_to_gpu_gbps")
    link = (f"{ic.get('kind') or '?'} {gbps} GB/s" if gbps else
            f"{ic.get('kind') or '?'} (not in the catalog: {DEFAULT_LINK_GBPS:g} GB/s a direction assumed)") \
        if sc.num_gpus > 1 else "-"
    jpt = busy_w * sc.num_gpus * tau0 / sc.batch
    return PlanOption(gpu.id, cand.label, sc.batch, sc.num_gpus, r, gpus,
                      gpus * price * HOURS_PER_MONTH if price else None, kwh,
                      kwh * req.grid_gco2_per_kwh / 1000 if req.grid_gco2_per_kwh is not None else None,
                      lat.ttft_p95_s + t_req, lat.tau_s, util, loss, link, step_model=label, j_per_token=jpt,
                      power_w_per_gpu=busy_w)


def plan_dict(plans: list[GpuPlan]) -> list[dict]:
    return [{"gpu": p.gpu, "best": asdict(p.best) if p.best else None, "blocked": p.blocked} for p in plans]


@dataclass
class CompareRow:
    gpu: str
    candidate: str | None
    batch: int | None
    decode_tok_s: float | None
    usd_per_mtok: float | None
    usd_per_mtok_interval: tuple | None
    tokens_per_joule: float | None
    quality_loss: float | None
    list_price_usd: float | None
    list_price_source: str | None
    payback_months: float | None
    reason: str | None = None
    speed_model: str | None = None
    engine: str | None = None
    j_per_token: float | None = None
    backed: bool = True   # the engine's speed figures for this GPU rest on measured or published rows
    num_gpus: int = 1     # tensor-parallel GPUs of one replica (the fewest on which something fits)
    tpot_ms: float | None = None  # predicted time per output token of each sequence at ``batch``


COMPARE_NUM_GPUS = (1, 2, 4, 8)


def compare(model: str, gpus=("all",), max_quality_loss: float | None = 0.02, context: int = 4096,
            gen_len: int = 256, batch: int = 32, usd_per_kwh: float | None = None, speed_model=None,
            cat: Catalog | None = None, engine: str | None = None, pins: dict | None = None,
            max_tpot_s: float | None = None, max_accuracy_drop: float | None = None) -> list[CompareRow]:
    """Per GPU: the cheapest feasible method at the largest batch (<= ``batch``, halving) that fits and
    keeps each sequence's time per output token within ``max_tpot_s`` (seconds; the decode step, None =
    no bound), on the fewest GPUs (1, 2, 4, 8, tensor parallel) on which something does. A decode step
    grows with the batch, so the largest such batch is the most tokens per second the GPU serves
    within the bound.

    Payback: months of renting at the profile's cloud price that equal the card's list price, less
    the owner's electricity when ``usd_per_kwh`` is given (no default: prices vary by site)."""
    from .engine import Request, recommend

    cat = cat or load()
    engine = cat.default_engine if engine is None else engine
    cat.llm(model)
    rows = []
    for gid in _resolve_gpus(cat, gpus):
        gpu = cat.gpus[gid]
        price = gpu.cloud_usd_per_hour
        rec, b, n = None, batch, 1
        for n in COMPARE_NUM_GPUS:  # the fewest GPUs (tensor parallel) on which something fits
            b = batch
            while b >= 1:
                rec = recommend(Request(gpu=gid, model=model, max_quality_loss=max_quality_loss, context=context,
                                        gen_len=gen_len, batch=b, objective="cost" if price else "throughput",
                                        engine=engine, num_gpus=n,
                                        min_tok_s=1.0 / max_tpot_s if max_tpot_s else None,
                                        max_accuracy_drop=max_accuracy_drop,
                                        **{f"pin_{k}": v for k, v in (pins or {}).items()}),
                                cat, speed_model)
                if rec.best:
                    break
                b //= 2
            if rec and rec.best:
                break
        lp = gpu.list_price_usd
        lsrc = (gpu.raw.get("list_price") or {}).get("source")
        if not rec or not rec.best:
            why = "; ".join(rec.relaxations) if rec else "no candidate"
            rows.append(CompareRow(gid, None, None, None, None, None, None, None, lp, lsrc, None, why))
            continue
        p = rec.best.prediction
        payback = None
        if lp and price:
            monthly_rent = price * n * HOURS_PER_MONTH
            power_cost = (p.power_w / 1000 * HOURS_PER_MONTH * usd_per_kwh) if usd_per_kwh else 0.0  # all n GPUs
            saved = monthly_rent - power_cost
            payback = lp * n / saved if saved > 0 else math.inf
        u = p.usd_per_mtok
        rows.append(CompareRow(gid, p.candidate.label, b, p.speed.decode_tok_s.value, u.value if u else None,
                               (u.low, u.high) if u else None, 1.0 / p.j_per_token.value,
                               p.quality_loss.value if p.quality_loss else None, lp, lsrc, payback,
                               speed_model=p.speed_model, engine=p.engine, j_per_token=p.j_per_token.value,
                               backed=not any("no published or measured row" in x for x in p.speed.notes),
                               num_gpus=n, tpot_ms=1e3 / p.speed.per_seq_tok_s.value))
    # GPUs whose figures rest on no measured or published row rank after the backed ones (and say so)
    rows.sort(key=lambda r: (r.usd_per_mtok is None, not r.backed, r.usd_per_mtok or 0, -(r.decode_tok_s or 0)))
    return rows
