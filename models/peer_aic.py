"""NVIDIA AIConfigurator (``pip install aiconfigurator``, 0.12.0) beside the engine cost model on the same
published rows (issue 10, part 8).

AIConfigurator pins its own dependencies, so it runs in its own Python (``ADVISOR_AIC_PYTHON``, or this one
when it imports ``aiconfigurator``): a small driver reads one JSON query a line and answers with
``aiconfigurator.cli.api.cli_estimate`` (aggregated in-flight batching, its measured perf database). The
queries are the rows :func:`models.engine_fit.design` maps, on the GPUs AIConfigurator has systems for,
with the batch our design uses (the row's, or for a max-throughput row the KV-capacity batch our serving
model picks, the same for both predictors). Answers are cached by query (profiles.cache).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from profiles import load
from profiles.dtypes import FP8

AIC_SYSTEMS = {"h100-sxm": "h100_sxm", "h200": "h200_sxm", "b200": "b200_sxm", "a100-80g-sxm": "a100_sxm",
               "l40s": "l40s", "l4": "l4", "h100-pcie": "h100_pcie", "a100-40g-pcie": "a100_pcie"}
# each method's gemm_quant_mode in AIConfigurator (methods.yaml aiconfigurator_gemm); others are not queried
AIC_GEMM = {m.id: m.get("aiconfigurator_gemm") for m in load().methods.values() if m.get("aiconfigurator_gemm")}
METRICS = ("output_tok_s", "tpot_ms", "ttft_ms")

DRIVER = r"""
import json, logging, sys, warnings
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
from aiconfigurator.cli.api import cli_estimate
for line in sys.stdin:
    q = json.loads(line)
    try:
        r = cli_estimate(q["model_path"], q["system"], backend_name=q["backend"], isl=q["isl"], osl=q["osl"],
                         batch_size=q["batch"], tp_size=q["tp"], gemm_quant_mode=q["gemm"],
                         kvcache_quant_mode=q.get("kv"))
        out = {"ttft_ms": float(r.ttft), "tpot_ms": float(r.tpot), "output_tok_s": float(r.raw.get("tokens/s") or 0),
               "version": r.backend_version}
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


def aic_python() -> str | None:
    """The Python that imports aiconfigurator, or None."""
    env = os.environ.get("ADVISOR_AIC_PYTHON")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    try:
        import aiconfigurator  # noqa: F401
        return sys.executable
    except ImportError:
        return None


def _config_dir(cat, model_id: str, root: Path) -> str:
    """A config.json for the catalog model (AIConfigurator reads the architecture from it)."""
    llm = cat.llm(model_id)
    d = llm.hf_config_dict()
    d.update(architectures=["Qwen2ForCausalLM" if llm.model_type == "qwen2" else
                            "MistralForCausalLM" if llm.model_type == "mistral" else "LlamaForCausalLM"],
             model_type=llm.model_type, torch_dtype="bfloat16")
    p = root / model_id
    p.mkdir(parents=True, exist_ok=True)
    (p / "config.json").write_text(json.dumps(d))
    return str(p)


def queries(d, df, cat, limit: int = 150, seed: int = 0) -> list[tuple[int, dict]]:
    """(design position, query) for up to ``limit`` rows AIConfigurator can answer (a fixed random sample
    when there are more, balanced over the metrics)."""
    backend = cat.engines[d.engine].get("aiconfigurator_backend")  # engines.yaml
    if backend is None:
        return []
    cand = {m: [] for m in METRICS}
    for i in range(len(d)):
        if d.kind[i] != "published" or d.metric[i] not in METRICS or d.gpu[i] not in AIC_SYSTEMS:
            continue
        r = df.loc[d.index[i]]
        prec = str(r["precision"])
        if prec not in AIC_GEMM or not d.prompt[i] or (d.metric[i] != "ttft_ms" and not d.gen[i]):
            continue
        cand[d.metric[i]].append(i)
    rng = np.random.default_rng(seed)
    per = max(1, limit // len(METRICS))
    pick = []
    for m, idx in cand.items():
        pick += list(rng.choice(idx, size=min(per, len(idx)), replace=False)) if idx else []
    root = Path(tempfile.gettempdir()) / "advisor-aic-models"
    out = []
    for i in sorted(int(x) for x in pick):
        r = df.loc[d.index[i]]
        kv = str(r.get("kv_dtype") or "").lower()
        out.append((i, {"model_path": _config_dir(cat, d.model[i], root), "system": AIC_SYSTEMS[d.gpu[i]],
                        "backend": backend, "isl": int(d.prompt[i]), "osl": int(max(d.gen[i], 2)),
                        "batch": int(max(1, round(d.batch[i]))), "tp": int(float(r.get("num_gpus") or 1)),
                        "gemm": AIC_GEMM[str(r["precision"])], "kv": FP8 if FP8 in kv else None}))
    return out


def run(qs: list[dict], python: str, timeout_s: float = 1800) -> list[dict]:
    """Answers for the queries (cached by query)."""
    from profiles import cache
    todo, res = [], [None] * len(qs)
    for k, q in enumerate(qs):
        key = cache.digest(json.dumps({kk: v for kk, v in q.items() if kk != "model_path"}, sort_keys=True),
                           Path(q["model_path"]).name)
        hit = cache.get("aic", key)
        if hit is not None:
            res[k] = hit
        else:
            todo.append((k, key))
    if todo:
        p = subprocess.run([python, "-c", DRIVER], input="".join(json.dumps(qs[k]) + "\n" for k, _ in todo),
                           capture_output=True, text=True, timeout=timeout_s, check=False)
        answers = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        for (k, key), a in zip(todo, answers, strict=False):
            res[k] = a
            if "error" not in a:
                cache.put("aic", key, a)
    return [r or {"error": "no answer"} for r in res]


def side_by_side(d, df, cat, ours_pred: np.ndarray, limit: int = 150) -> dict:
    """Median APE of AIConfigurator and of our held-out predictions on the same rows, per metric."""
    py = aic_python()
    if py is None:
        return {"available": False, "note": "AIConfigurator not found: pip install aiconfigurator in its own "
                                            "environment and set ADVISOR_AIC_PYTHON to its python"}
    qs = queries(d, df, cat, limit)
    if not qs:
        return {"available": True, "rows": 0, "note": f"no {d.engine} rows on GPUs AIConfigurator models"}
    ans = run([q for _, q in qs], py)
    out, version = {}, None
    for (i, _), a in zip(qs, ans, strict=True):
        m = d.metric[i]
        if "error" in a or not a.get(m):
            out.setdefault(m, {"aic": [], "ours": [], "failed": 0})["failed"] += 1
            continue
        version = a.get("version", version)
        o = out.setdefault(m, {"aic": [], "ours": [], "failed": 0})
        o["aic"].append(abs(a[m] - d.y[i]) / d.y[i])
        o["ours"].append(abs(ours_pred[i] - d.y[i]) / d.y[i])
    res = {"available": True, "aiconfigurator": f"aiconfigurator 0.12.0 (perf database of {d.engine} {version})",
           "rows": len(qs), "metrics": {}}
    for m, o in out.items():
        n = len(o["aic"])
        res["metrics"][m] = {"n": n, "failed": o["failed"],
                             "aic_median_ape": float(np.median(o["aic"])) if n else None,
                             "ours_median_ape": float(np.median(o["ours"])) if n else None}
    return res
