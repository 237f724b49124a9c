"""Energy cost model: board power from how hard a step drives the GPU, J/token, EOR and TWEOR.

Power of one GPU (issue 14): ``P = idle + (TDP - idle) x clip(active + c_memory x u_memory + c_kv x u_kv +
c_compute x u_compute, 0, 1)``, where ``u_memory`` and ``u_compute`` say how hard the step drives the memory
system and the tensor cores (the unit's datasheet-roofline time / the step time: decode at small batch drives
memory, prefill and large batches the tensor cores, large-batch decode both) and ``u_kv`` is the part of
``u_memory`` spent reading the KV cache, which attention kernels do at a higher power per byte than weight
streaming or a copy (measurement/data/power_probe). So a prediction always lies in [idle_w, TDP] of its GPU (tested for every GPU, method and
batch). ``idle_w`` and ``tdp_w`` come from the GPU catalog (cited); where a GPU has no idle figure,
DEFAULT_IDLE_FRACTION of its TDP stands in. ``active``, ``c_memory``, ``c_kv`` and ``c_compute`` are fitted on NVML
rows measured on H100 SXM and H200 (``python -m models.energy_fit`` -> models/data/power.json, with the
leave-one-source-out error as the interval); ``advisor validate --energy`` holds out each source, and
checks the published ML.ENERGY rows on H100 and B200 that the fit never saw.

EOR and TWEOR follow energy-aware deployment studies: EOR = task score / Wh,
TWEOR = task score / (Wh x s). Here the task score is the relative quality kept
(1 - predicted quality loss), per 1,000 generated tokens.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .estimate import Estimate

# Idle as a fraction of TDP where the catalog has no cited idle figure: the H200's measured idle share
# from the earlier two-point line (129 W of 700 W; shared/gpu-notes.md), an assumption for other GPUs.
DEFAULT_IDLE_FRACTION = 0.184
PARAMS_PATH = Path(__file__).resolve().parent / "data" / "power.json"


@lru_cache(maxsize=1)
def power_params() -> dict:
    return json.loads(PARAMS_PATH.read_text())


def rel_err() -> float:
    """Relative half-width of a power prediction (leave-one-source-out 90% quantile, log scale)."""
    import math
    return math.exp(float(power_params()["rel_err"])) - 1


def idle_w(gpu) -> float:
    return float(gpu.idle_w) if gpu.idle_w else DEFAULT_IDLE_FRACTION * gpu.tdp_w


def board_power_w(gpu, u_memory: float, u_compute: float = 0.0, params: dict | None = None,
                  u_kv: float = 0.0) -> float:
    """Watts of one GPU running a step that drives its memory system at ``u_memory`` and its tensor cores at
    ``u_compute`` (each: datasheet-roofline time of that unit / step time); ``u_kv``: the part of
    ``u_memory`` that reads the KV cache through attention kernels, which draws more per byte than streaming
    weights (measurement/data/power_probe: decode attention 682 W where a copy drew 472 W at the same
    bandwidth), charged ``c_kv`` on top."""
    p = params or power_params()
    um = min(max(float(u_memory), 0.0), 1.0)
    uk = min(max(float(u_kv), 0.0), um)
    uc = min(max(float(u_compute), 0.0), 1.0)
    frac = min(max(p["active"] + p["c_memory"] * um + p.get("c_kv", 0.0) * uk + p["c_compute"] * uc, 0.0), 1.0)
    idle = idle_w(gpu)
    return idle + (gpu.tdp_w - idle) * frac


def joules_per_token(power_w: float, step_s: float, tokens_per_step: int) -> float:
    return power_w * step_s / tokens_per_step


def eor(quality_kept: float, wh: float) -> float:
    """Energy-to-output ratio: task score per Wh."""
    return quality_kept / wh if wh > 0 else float("inf")


def tweor(quality_kept: float, wh: float, seconds: float) -> float:
    """Time-weighted EOR: task score per (Wh x s)."""
    return quality_kept / (wh * seconds) if wh > 0 and seconds > 0 else float("inf")


def j_per_token_estimate(value: float, rel_err: float, detail: str) -> Estimate:
    return Estimate.rel(value, rel_err, "J/token", "fitted", detail)
