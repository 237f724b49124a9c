"""Energy cost model: board power from utilisation, J/token, EOR and TWEOR.

Power model: P = TDP x (IDLE_FRACTION + DYNAMIC_FRACTION x u), capped at TDP, where u is the
roofline utilisation of the step (ideal time / predicted time). The two constants come from two
NVML readings on an H200 (700 W) decoding Llama-3.1-8B in bf16 at batch 1 (shared/gpu-notes.md):
393 W at u = 0.59 (CUDA graphs) and 6.56 J/token x 26.5 tok/s = 174 W at u = 0.10 (eager).
Solving the line through them: idle 129 W = 0.184 TDP, slope 447 W = 0.64 TDP.

EOR and TWEOR follow energy-aware deployment studies: EOR = task score / Wh,
TWEOR = task score / (Wh x s). Here the task score is the relative quality kept
(1 - predicted quality loss), per 1,000 generated tokens.
"""
from __future__ import annotations

from .estimate import Estimate

IDLE_FRACTION = 0.184
DYNAMIC_FRACTION = 0.64
REL_ERR = 0.30  # two-point fit on one GPU, applied to all


def board_power_w(tdp_w: float, utilisation: float, idle_w: float | None = None) -> float:
    u = min(max(utilisation, 0.0), 1.0)
    idle = idle_w if idle_w is not None else IDLE_FRACTION * tdp_w
    return min(tdp_w, idle + DYNAMIC_FRACTION * tdp_w * u)


def joules_per_token(power_w: float, step_s: float, tokens_per_step: int) -> float:
    return power_w * step_s / tokens_per_step


def eor(quality_kept: float, wh: float) -> float:
    """Energy-to-output ratio: task score per Wh."""
    return quality_kept / wh if wh > 0 else float("inf")


def tweor(quality_kept: float, wh: float, seconds: float) -> float:
    """Time-weighted EOR: task score per (Wh x s)."""
    return quality_kept / (wh * seconds) if wh > 0 and seconds > 0 else float("inf")


def j_per_token_estimate(value: float, rel_err: float, detail: str) -> Estimate:
    return Estimate.rel(value, rel_err, "J/token", "analytical", detail)
