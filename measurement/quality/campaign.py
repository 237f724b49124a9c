"""Small-model quality campaign: train a small Llama on the King James Bible, then measure how every
compression method changes its held-out perplexity.

    python -m measurement.quality.campaign --train --eval --out $OUT

* ``--train``: train (see :mod:`.model`), save weights/config/log to ``--out`` as soon as trained.
  Without it the kept weights (``measurement/data/quality/kjv-llama-12m.safetensors``, or the copy
  already in ``--out``) are loaded.
* ``--eval``: every method of :func:`plan` becomes one row appended to ``OUT/quality_rows.jsonl`` the
  moment it is measured (unsupported, error and out-of-memory become rows too). A rerun skips rows
  already there (copy an earlier ``quality_rows.jsonl`` into ``--out`` to resume). After
  ``--deadline-s`` seconds no new method starts. At the end ``small_model_quality.csv`` and its
  ``.meta.json`` sidecar are written from all rows, and a short table is printed.
Methods are applied through :mod:`measurement.apply` (see :mod:`.methods`); the plan of methods is in
:mod:`.plan`, the row file, CSV, sidecar and table in :mod:`.rows`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

from .plan import KV_BUDGETS, TRAIN_CANDIDATES, is_base, parse_candidates, plan
from .plan import base as reference
from .rows import (CSV_NAME, META_NAME, ROWS_NAME, _now, append_row, metadata, print_table, provenance, read_rows,
                   row_key, write_csv)

T0 = time.monotonic()


def log(msg: str):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m measurement.quality.campaign", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--out", default="out/quality")
    ap.add_argument("--tiny", action="store_true", help="tiny model for CPU tests")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default=None, help="safetensors to load when not training")
    ap.add_argument("--train-steps", type=int, default=800, help="steps of a candidate that names none")
    ap.add_argument("--train-candidates", default=TRAIN_CANDIDATES,
                    help="'dropout:steps,...': each trained from the same init with a cosine schedule; the "
                         "checkpoint with the best validation ppl over all of them is kept")
    ap.add_argument("--train-budget-s", type=float, default=200.0, help="for all candidates together")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--decode-batch", type=int, default=160, help="windows per batch in ppl_decode")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--prefix", type=int, default=384, help="prefill length of the ppl_decode protocol")
    ap.add_argument("--kv-budgets", default=",".join(map(str, KV_BUDGETS)))
    ap.add_argument("--max-windows", type=int, default=0, help="cap on scored windows (0 = all)")
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--only", default="", help="comma list of method filters (precision/sparsity/kv names)")
    ap.add_argument("--deadline-s", type=float, default=500.0, help="start no new method after this")
    ap.add_argument("--git-commit", default=None)
    args = ap.parse_args(argv)
    if not (args.train or args.eval):
        ap.error("give --train and/or --eval")

    import torch

    from . import corpus
    from . import model as M

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    prov = provenance(device, args.git_commit)
    log(f"device {device} {prov.get('gpu')} torch {prov['torch']} transformers {prov['transformers']} "
        f"bnb {prov['bitsandbytes']} torchao {prov['torchao']}")
    tok = corpus.load_tokenizer()
    splits = corpus.token_splits(tok)
    ids = {k: torch.tensor(v, dtype=torch.long) for k, v in splits.items()}
    log("tokens: " + ", ".join(f"{k} {v.numel()}" for k, v in ids.items()))
    model_id = "kjv-llama-tiny" if args.tiny else M.MODEL_ID
    arch = M.TINY if args.tiny else M.SMALL
    wname = f"{model_id}.safetensors"
    w_out = out / wname

    # ------------------------------------------------------------------ train or load
    train_summary = None
    if args.train:
        cfg = M.make_config(arch, tok)
        cands = parse_candidates(args.train_candidates, args.train_steps)
        log(f"training {model_id}: {M.n_params(M.build_model(cfg)):,} params; {len(cands)} candidate "
            f"schedule(s), best validation ppl kept; budget {args.train_budget_s:.0f}s in all")
        t_train, results, best = time.monotonic(), [], None
        for ci, (dropout, steps) in enumerate(cands):
            left = args.train_budget_s - (time.monotonic() - t_train)
            per_step = (results[-1]["train_wall_s"] / max(1, results[-1]["steps"])) if results else 0.0
            if results and per_step * steps * 1.1 > left:
                log(f"candidate {ci} (dropout {dropout}, {steps} steps) skipped: ~{per_step * steps:.0f}s > {left:.0f}s left")
                continue
            model = M.build_model(cfg, device=device, dtype=torch.float32)
            s = M.TrainSettings(seq_len=args.seq_len, batch_size=args.train_batch, max_steps=steps,
                                time_budget_s=max(1.0, left), lr=args.lr, eval_every=args.eval_every,
                                warmup_steps=min(100, max(1, steps // 10)), eval_windows=args.max_windows,
                                dropout=dropout, schedule="cosine")
            log(f"candidate {ci}: dropout {dropout}, cosine over {steps} steps")
            model, summ = M.train(model, ids["train"], ids["validation"], s,
                                  log_fn=lambda r, ci=ci: log(f"train[{ci}] " + json.dumps(r)))
            summ["log"] = s.log
            summ["candidate"] = ci
            results.append(summ)
            if best is None or summ["best_val_ppl"] < best[0]["best_val_ppl"]:
                best = (summ, {k: v.detach().to("cpu") for k, v in model.state_dict().items()})
            del model
        train_summary, state = best
        model = M.build_model(cfg, device=device, dtype=torch.float32)
        model.load_state_dict(state)
        model.eval()
        train_summary = {k: v for k, v in train_summary.items() if k != "log"}
        train_summary.update(train_wall_s_all_candidates=round(time.monotonic() - t_train, 2),
                             chosen_candidate=train_summary["candidate"],
                             candidates=[{k: v for k, v in r.items()} for r in results])
        model = model.to(torch.bfloat16)
        vb = M.window_nll(model, ids["validation"], args.seq_len, max_windows=args.max_windows)
        tb = M.window_nll(model, ids["test"], args.seq_len, max_windows=args.max_windows)
        train_summary.update(params=M.n_params(model), val_ppl_bf16=math.exp(vb[0] / vb[1]),
                             test_ppl_bf16=math.exp(tb[0] / tb[1]), val_tokens_scored=vb[1],
                             test_tokens_scored=tb[1])
        meta = {"model": model_id, "params": M.n_params(model), "best_step": train_summary["best_step"],
                "val_ppl_bf16": f"{train_summary['val_ppl_bf16']:.4f}", "corpus": "KJV bible (bible-kjv-text 4.38)",
                "split": json.dumps(corpus.SPLIT_DOC), **{k: prov[k] for k in ("gpu", "torch", "transformers")}}
        M.save_model(model, w_out, config_path=out / "config.json", metadata=meta)
        M.write_train_log(out / "train_log.json", train_summary, best[0]["log"],
                          extra={"model": model_id, "architecture": arch, "provenance": prov,
                                 "tokenizer": "measurement/data/quality/tokenizer.json (byte-level BPE, "
                                              f"vocab {tok.get_vocab_size()}, trained on the train split)",
                                 "split": corpus.SPLIT_DOC, "date_utc": _now()})
        log("trained: " + json.dumps({k: v for k, v in train_summary.items() if k not in ("settings", "candidates")})
            + "; candidates (dropout, steps, best val ppl): "
            + ", ".join(f"({c['settings']['dropout']}, {c['steps']}, {c['best_val_ppl']:.2f})"
                        for c in train_summary["candidates"]))
        log(f"saved {w_out} ({w_out.stat().st_size / 1e6:.1f} MB)")
        del model
    if not args.eval:
        return 0

    # ------------------------------------------------------------------ evaluate
    if args.weights:
        w_path, c_path = Path(args.weights), Path(args.weights).with_name("config.json")
    elif w_out.exists():
        w_path, c_path = w_out, out / "config.json"
    else:
        w_path, c_path = M.WEIGHTS_PATH, M.CONFIG_PATH
    if not w_path.exists():
        log(f"no weights at {w_path}: train first (--train)")
        return 2
    weights_label = f"trained here: measurement/data/quality/{wname}"
    rows_path = out / ROWS_NAME
    rows = read_rows(rows_path)
    done = {row_key(r): r for r in rows}
    from ..method_base import notes_of
    from ..sparsity import apply_sparsity
    from . import methods as MM

    base_model = lambda: M.load_model(w_path, c_path, device=device, dtype=torch.bfloat16)  # noqa: E731
    g = torch.Generator().manual_seed(1)
    tr = ids["train"]
    starts = torch.randint(0, tr.numel() - args.seq_len, (args.calib_windows,), generator=g)
    calib = torch.stack([tr[s: s + args.seq_len] for s in starts]).to(device)
    budgets = [int(b) for b in args.kv_budgets.split(",") if b]
    todo = plan(budgets)
    if args.only:
        keep = set(args.only.split(","))
        todo = [t for t in todo if is_base(t) or keep & {t["precision"], t["sparsity"], t["kv"]}]
    common = {"model": model_id, "seq_len": args.seq_len, "stride": args.seq_len, "weights": weights_label,
              **{k: prov[k] for k in ("gpu", "torch", "transformers", "bitsandbytes", "torchao", "git_commit")}}
    baselines: dict[str, dict] = {}
    for r in rows:
        if is_base(r) and r["status"] == "ok":
            baselines[r["metric"]] = r
    n_new = 0
    for spec in todo:
        key = row_key({**common, **spec})
        if key in done:
            continue
        el = time.monotonic() - T0
        if el > args.deadline_s:
            left = sum(1 for t in todo if row_key({**common, **t}) not in done)
            log(f"deadline ({args.deadline_s:.0f}s) reached: {left} methods not started")
            break
        name = "/".join(str(spec[k]) for k in ("precision", "sparsity", "kv", "kv_budget", "metric"))
        row = {**common, **spec, "baseline": None, "value": None, "delta_rel": None, "n_tokens": None,
               "status": "ok", "reason": "", "notes": ""}
        t1 = time.monotonic()
        model = None
        try:
            model = base_model()
            model, notes = MM.apply_methods(model, spec, calib)
            if spec["metric"] == "ppl":
                from .evaluate import ppl

                try:
                    res = ppl(model, ids["test"], args.seq_len, batch_size=16, max_windows=args.max_windows)
                except Exception as e:  # noqa: BLE001
                    if not (spec["sparsity"].startswith("2:4") and spec["precision"] == reference()["precision"]):
                        raise
                    # the semi-structured kernel failed: the same mask in dense storage (same numerics)
                    log(f"2:4 semi-structured forward failed ({type(e).__name__}: {str(e)[:200]}); dense mask")
                    del model
                    model = base_model()
                    model = apply_sparsity(model, spec["sparsity"], calib_batches=MM.calib_list(calib),
                                           semi_structured=False)
                    notes = [f"semi-structured kernel failed ({type(e).__name__}: {str(e)[:150]}); "
                             "mask measured in dense storage"] + notes_of(model)
                    res = ppl(model, ids["test"], args.seq_len, batch_size=16, max_windows=args.max_windows)
            else:
                from .evaluate import ppl_decode

                factory, kv_notes = MM.cache_factory(spec, model)
                notes += kv_notes
                res = ppl_decode(model, ids["test"], factory, seq_len=args.seq_len, prefix=args.prefix,
                                 batch_size=args.decode_batch, max_windows=args.max_windows)
            row.update(value=res["ppl"], n_tokens=res["n_tokens"], window_nll=res["window_nll"],
                       tokens_per_window=res["tokens_per_window"])
            proto = (f"non-overlapping windows of {args.seq_len}, stride {args.seq_len}, {res['n_windows']} windows, "
                     f"{args.seq_len - 1} scored tokens each" if spec["metric"] == "ppl" else
                     f"{res['n_windows']} windows of {args.seq_len}: prefill {args.prefix} tokens into the cache, "
                     f"then score {args.seq_len - args.prefix} tokens decoded one at a time through it")
            notes = [proto] + notes
            row["notes"] = "; ".join(n for n in notes if n)
        except Exception as e:  # noqa: BLE001 - every failure becomes a row
            status, reason = MM.classify_error(e)
            row.update(status=status, reason=reason)
            if status == "error":
                traceback.print_exc(limit=4)
        finally:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if is_base(spec) and row["status"] == "ok":
            baselines[spec["metric"]] = row
        base = baselines.get(MM.BASELINE_METRIC.get(spec["metric"], spec["metric"]))
        if base is not None:
            row["baseline"] = base["value"]
            if row["value"] is not None:
                row["delta_rel"] = row["value"] / base["value"] - 1.0
                if base.get("window_nll") and len(base["window_nll"]) == len(row["window_nll"]):
                    from .evaluate import delta_ci

                    ci = delta_ci(row["window_nll"], base["window_nll"], row["tokens_per_window"])
                    if ci:
                        row["delta_ci95_lo"], row["delta_ci95_hi"] = ci
        row["date_utc"] = _now()
        row["eval_s"] = round(time.monotonic() - t1, 2)
        append_row(rows_path, row)
        done[key] = row
        rows.append(row)
        n_new += 1
        d = row["delta_rel"]
        log(f"{name}: {row['status']} ppl={row['value'] if row['value'] is None else round(row['value'], 4)} "
            f"delta={'-' if d is None else f'{d:+.2%}'} ({row['eval_s']}s) {row['reason'][:120]}")

    write_csv(rows, out / CSV_NAME)
    meta = metadata(args, prov, model_id, wname, rows, out)
    (out / META_NAME).write_text(json.dumps(meta, indent=1, default=str) + "\n")
    log(f"{n_new} new rows, {len(rows)} in {rows_path}")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
