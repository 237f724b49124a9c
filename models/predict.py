"""One call that predicts everything for a candidate: memory, speed, energy, cost and quality."""
from __future__ import annotations

from dataclasses import dataclass, field

from profiles import GPU, LLM, Catalog, harness_engine_id

from . import energy
from . import engine_memory as em
from .candidate import Candidate, Scenario
from .estimate import Estimate
from .memory import MemoryBreakdown, predict_memory
from .quality import ComponentLoss, QualityModel
from .quality_served import served as served_quality
from .speed import SpeedPrediction, predict_speed


@dataclass
class Prediction:
    candidate: Candidate
    memory: MemoryBreakdown
    speed: SpeedPrediction
    power_w: float
    j_per_token: Estimate
    usd_per_mtok: Estimate | None
    quality_loss: Estimate | None
    quality_parts: list[ComponentLoss]
    quality_missing: list[tuple]
    request_latency_s: Estimate
    eor: float | None = None
    tweor: float | None = None
    speed_model: str = "analytical"
    notes: list[str] = field(default_factory=list)
    engine: str = field(default_factory=harness_engine_id)  # the engine id (engines.yaml)
    memory_fraction: float = 1.0         # share of the GPU the engine may use (vLLM reserves 0.9)
    kv_capacity_tokens: float | None = None
    fixed_gb: float | None = None        # GB per GPU of weights and runtime, where a serving engine's rule applies
    fraction_of_free: bool = False       # memory_fraction is of what weights and runtime leave (TensorRT-LLM)
    # every quality quantity: kind -> (Estimate or None, parts, components with no figure of that kind);
    # quality_loss / quality_parts / quality_missing above are the perplexity one (ppl_delta)
    quality: dict = field(default_factory=dict)


def predict(cat: Catalog, gpu: GPU, llm: LLM, cand: Candidate, sc: Scenario,
            quality: QualityModel | None = None, speed_model=None) -> Prediction:
    """Predict a candidate. ``speed_model`` (a fitted cost model) replaces the analytical speed
    and memory figures where it can; otherwise the analytical ones stand."""
    mem = predict_memory(cat, llm, cand, sc)
    spd = predict_speed(cat, gpu, llm, cand, sc)
    used = "analytical"
    if speed_model is not None:
        fitted = speed_model.predict_one(cat, gpu, llm, cand, sc, spd, mem)
        if fitted is not None:
            spd, mem, used = fitted[0], fitted[1], fitted[2]
    power, j = energy_of(gpu, spd, sc)
    return assemble(cat, gpu, llm, cand, sc, mem, spd, power, j, quality, used)


def memory_budget(p: Prediction, capacity_gb: float) -> tuple[float, str]:
    """(GB per GPU the engine may fill, how it sizes them in words) on a card of ``capacity_gb``: a serving engine's
    own rule (:mod:`models.engine_memory`; TensorRT-LLM's fraction is of the memory left free), else the memory
    fraction of the card."""
    if p.fixed_gb is not None:
        return (em.budget_gb(capacity_gb, p.memory_fraction, p.fixed_gb, p.fraction_of_free),
                em.rule(p.engine, p.memory_fraction, capacity_gb, p.fraction_of_free))
    return capacity_gb * p.memory_fraction, f"{p.engine} uses {p.memory_fraction:.0%} of {capacity_gb:g} GB"


def fraction_needed(p: Prediction, capacity_gb: float) -> float:
    """The engine memory fraction at which ``p``'s memory per GPU would fit a card of ``capacity_gb``, in the
    engine's own terms (of the card, or of what weights and runtime leave free)."""
    need = p.memory.per_gpu_gb.value
    if p.fixed_gb is None:
        return need / capacity_gb
    return em.fraction_for(need, capacity_gb, p.fixed_gb, p.fraction_of_free)


def energy_of(gpu: GPU, spd: SpeedPrediction, sc: Scenario) -> tuple[float, Estimate]:
    """Board power of the GPUs (W) and J/token of a decode step: the one power model
    (:func:`models.energy.board_power_w`) at the step's roofline utilisation, times the step time. Every
    command gets its energy here, so one configuration has one J/token."""
    step_s = spd.decode_step_ms.value / 1e3
    um, uc = spd.memory_floor_ms / spd.decode_step_ms.value, spd.compute_floor_ms / spd.decode_step_ms.value
    power = energy.board_power_w(gpu, um, uc, u_kv=spd.kv_floor_ms / spd.decode_step_ms.value) * sc.num_gpus
    jpt = energy.joules_per_token(power, step_s, sc.batch)
    rel = energy.rel_err() + (spd.decode_step_ms.high / spd.decode_step_ms.value - 1)
    return power, energy.j_per_token_estimate(jpt, rel, "power model (models/energy.py, fitted on NVML rows) "
                                                        "x predicted step time")


def assemble(cat: Catalog, gpu: GPU, llm: LLM, cand: Candidate, sc: Scenario, mem: MemoryBreakdown,
             spd: SpeedPrediction, power: float, j: Estimate, quality: QualityModel | None, used: str) -> Prediction:
    """The figures every cost model derives the same way from speed, memory and energy: cost per token,
    quality, request latency, EOR and TWEOR."""
    price = gpu.cloud_usd_per_hour
    usd = None
    if price:
        per_tok_s = spd.decode_tok_s
        k = price * sc.num_gpus / 3600 * 1e6
        usd = Estimate(k / per_tok_s.value, k / per_tok_s.high, k / per_tok_s.low, "USD/Mtok", "analytical",
                       f"{price} USD/h ({gpu.raw['cloud_price'].get('provider')}, {gpu.raw['cloud_price'].get('date') or 'undated page'}) "
                       "/ predicted decode throughput")
    q = quality or served_quality(cat)
    allq = q.predict_all(llm, cand, context=sc.prompt_len + sc.gen_len)
    loss, parts, missing = allq["ppl_delta"]
    lat = spd.prefill_ms.scale(1e-3, "s")
    dec = spd.decode_step_ms.scale(sc.gen_len * 1e-3, "s")
    req = Estimate(lat.value + dec.value, lat.low + dec.low, lat.high + dec.high, "s", spd.decode_step_ms.source,
                   "prefill + gen_len x decode step")
    p = Prediction(cand, mem, spd, power, j, usd, loss, parts, missing, req, speed_model=used, quality=allq)
    if loss is not None:
        kept = max(0.0, 1.0 - loss.value)
        wh = j.value * 1000 / 3600  # Wh per 1,000 generated tokens
        p.eor = energy.eor(kept, wh)
        p.tweor = energy.tweor(kept, wh, req.value)
    return p
