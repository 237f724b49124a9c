"""Which measured rows (measurement/data/measurements.csv) the harness cost models learn from, and the
candidate of a row: shared by the correction (models/fitted.py) and the constants' fit (models/harness_fit.py)."""
from __future__ import annotations

import math

from .candidate import DEFAULT_KV, DEFAULT_SPARSITY, Candidate


# The compiled backend the cost model describes is the harness's regional-graph-fused one (one compiled
# decoder layer with merged q|k|v and gate|up weights, one CUDA graph per step); rows of its variants
# (unmerged, uncompiled layers, coordinate-descent tuning) are fitted with a feature each
# (correction.VARIANTS). Rows of the earlier whole-model torch.compile backend stay in the dataset as
# history, but they measured transformers' static-cache attention (repeated KV heads, full mask), not
# this backend, so they are not fitted.
SUPERSEDED_COMPILE_MODES = ("reduce-overhead", "max-autotune", "default", "none")
# A row whose prefill trials disagree by more than their median ((max - min) / median, measurement/dataset.py
# prefill_spread_pct) did not measure one prefill time: Mistral-7B's batch-1 prefill on both GPUs (trials
# 765 / 1048 / 25 ms on the H200) keeps a warm-up cost in its first trials. Its prefill is not learned from
# or scored; its decode, memory and energy are.
PREFILL_SPREAD_MAX_PCT = 100.0


def usable_rows(df):
    """ok rows the cost model learns from (see SUPERSEDED_COMPILE_MODES; prefill: PREFILL_SPREAD_MAX_PCT)."""
    if "status" in df:
        df = df[df["status"] == "ok"]
    if "compile_mode" in df and "backend" in df:
        old = (df["backend"] == "compiled") & df["compile_mode"].isin(SUPERSEDED_COMPILE_MODES)
        df = df[~old]
    if "prefill_spread_pct" in df and "prefill_ms" in df:
        noisy = df["prefill_spread_pct"].astype(float) > PREFILL_SPREAD_MAX_PCT
        if noisy.any():
            df = df.copy()
            df.loc[noisy, "prefill_ms"] = float("nan")
    return df


def row_candidate(r) -> Candidate:
    """The candidate (precision, sparsity, KV cache, budget) of a measured row."""
    budget = r.get("kv_budget")
    budget = int(budget) if budget is not None and not (isinstance(budget, float) and math.isnan(budget)) else None
    return Candidate(str(r["precision"]), str(r.get("sparsity") or DEFAULT_SPARSITY), str(r.get("kv") or DEFAULT_KV),
                     budget)
