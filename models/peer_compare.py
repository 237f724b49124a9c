"""Side by side: this advisor's cost model and the peer predictor llm-analysis on the same rows.

    python -m venv .peer && .peer/bin/pip install . llm-analysis==0.2.2
    .peer/bin/python -m models.peer_compare [--json]

(llm-analysis 0.2.2 pins transformers < 5 and huggingface-hub < 0.15: keep it out of the
environment that has the `measure` extra.)

Rows: third-party published decode tok/s (measurement/data/published_throughput.csv) and our own
measured rows (measurement/data/measurements.csv) wherever llm-analysis has the GPU. llm-analysis
gets the same architecture (from profiles/, its FFN width, which it requires to be a multiple of the hidden size, set nearest to
our 3-matrix MLP's parameter count) and its default efficiencies. Both errors are printed per source.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from profiles import load

from .candidate import DEFAULT_KV, DEFAULT_SPARSITY, Candidate, Scenario
from .speed import predict_speed
from .validate import harness_backend, published_rows

PEER_GPU = {"a10g": "a10g-pcie-24gb", "a100-40g-pcie": "a100-pcie-40gb", "a100-80g-sxm": "a100-sxm-80gb",
            "h100-sxm": "h100-sxm-80gb", "h100-pcie": "h100-pcie-80gb", "v100-32g": "v100-sxm-32gb"}
# each method's dtype config in llm-analysis (methods.yaml llm_analysis_dtype); others are not compared
PEER_DTYPE = {m.id: m.get("llm_analysis_dtype") for m in load().methods.values() if m.get("llm_analysis_dtype")}


def _peer_model_file(llm, folder: Path) -> str:
    cfg = {"name": f"advisor_{llm.id}", "num_layers": llm.num_hidden_layers, "n_head": llm.num_attention_heads,
           "hidden_dim": llm.hidden_size, "vocab_size": llm.vocab_size, "max_seq_len": llm.max_position_embeddings,
           "num_key_value_heads": llm.num_key_value_heads, "ffn_embed_dim": max(1, round(1.5 * llm.intermediate_size / llm.hidden_size)) * llm.hidden_size,
           "model_type": "llama"}
    p = folder / f"advisor_{llm.id}.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def peer_tok_s(gpu_id, llm, precision, batch, prompt, gen, folder: Path) -> float | None:
    from llm_analysis.analysis import infer

    g = PEER_GPU.get(gpu_id)
    if g is None or precision not in PEER_DTYPE:
        return None
    logging.disable(logging.CRITICAL)
    r = infer(model_name=_peer_model_file(llm, folder), gpu_name=g, dtype_name=PEER_DTYPE[precision],
              batch_size_per_gpu=batch, seq_len=prompt, num_tokens_to_generate=gen, log_level="CRITICAL")
    per_step = r.get("decode_latency")  # seconds per decode step (all sequences of the batch)
    return batch / per_step if per_step else None


def _measured_rows(cat) -> list[dict]:
    """Our measured rows on GPUs the peer knows, with the fitted model's leave-one-model-out prediction
    (held out: the row's model was never seen by the correction that predicts it, nor by the harness constants
    under it, refitted per fold by models/harness_fit.py)."""
    from measurement.dataset import load_dataset

    from .fitted import cross_val, design, refit_analytical, usable_rows

    df = usable_rows(load_dataset(ok_only=True))
    X, A, Y, keep, _ = design(df, cat)
    sub = df.loc[keep]
    cv = cross_val(X, A, Y, sub["model"].astype(str).to_numpy(), refit=refit_analytical(sub, cat))["decode_ms"]
    rows = []
    for i, (_, r) in enumerate(sub.iterrows()):
        if r["gpu"] not in PEER_GPU or r["sparsity"] != DEFAULT_SPARSITY or r["kv"] != DEFAULT_KV \
                or not np.isfinite(cv["pred"][i]):
            continue
        rows.append({"gpu": r["gpu"], "model": r["model"], "precision": r["precision"], "engine": f"harness-{r['backend']}",
                     "batch": int(r["batch"]), "prompt_len": int(r["prompt_len"]), "gen_len": int(r["gen_len"]),
                     "measured": float(r["decode_tok_s"]), "ours": float(r["batch"]) * 1e3 / cv["pred"][i]})
    return rows


def compare() -> dict:
    cat = load()
    out = {"published": [], "measured": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for r in _measured_rows(cat):
            try:
                peer = peer_tok_s(r["gpu"], cat.llm(r["model"]), r["precision"], r["batch"], r["prompt_len"],
                                  r["gen_len"], folder)
            except Exception:  # the peer raises on configs it cannot size
                peer = None
            if peer:
                out["measured"].append({**r, "peer": peer})
        for r in published_rows(cat=cat):
            batch = int(float(r["batch"]))
            prompt, gen = int(float(r["prompt_len"] or 128)), int(float(r["gen_len"] or 128))
            llm = cat.llms[r["model_id"]]
            try:
                peer = peer_tok_s(r["gpu_id"], llm, r["precision_id"], batch, prompt, gen, folder)
            except Exception as e:  # the peer raises on configs it cannot size (e.g. does not fit)
                logging.getLogger(__name__).debug("peer failed: %s", e)
                peer = None
            if peer is None:
                continue
            backend = harness_backend(cat, r["engine"])
            ours = predict_speed(cat, cat.gpus[r["gpu_id"]], llm, Candidate(r["precision_id"]),
                                 Scenario(batch, prompt, gen, backend)).decode_tok_s.value
            meas = float(r["decode_tok_s"])
            if batch > 1 and "aggregate" not in r.get("metric_definition", "").lower():
                ours, peer = ours / batch, peer / batch
            out["published"].append({"gpu": r["gpu_id"], "model": r["model_id"], "precision": r["precision_id"],
                                     "engine": r["engine"], "batch": batch, "measured": meas, "ours": ours,
                                     "peer": peer})
    return out


def summary(res: dict) -> dict:
    s = {}
    for src, rows in res.items():
        if not rows:
            continue
        m = np.array([r["measured"] for r in rows])
        s[src] = {"n": len(rows),
                  "ours_mape": float(np.mean(np.abs(np.array([r["ours"] for r in rows]) - m) / m)),
                  "peer_mape": float(np.mean(np.abs(np.array([r["peer"] for r in rows]) - m) / m))}
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = compare()
    s = summary(res)
    if args.json:
        print(json.dumps({"summary": s, **res}, indent=1))
        return
    for src, d in s.items():
        print(f"{src}: n={d['n']}  advisor MAPE {d['ours_mape'] * 100:.1f}%  llm-analysis MAPE {d['peer_mape'] * 100:.1f}%")


if __name__ == "__main__":
    main()
