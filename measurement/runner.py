"""The in-process runner: :class:`Runner` runs configs grouped so that each (model, precision, sparsity,
weights) is built once, writes one row per config to the :class:`~measurement.store.RowStore` (status
ok | does_not_fit | unsupported | error, and ``reason``), and stops starting configs after a deadline
(``time.time()`` seconds). :func:`base_row` holds a row's identity and provenance; :func:`static_check` the
reasons a config cannot run on any machine.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

from .backends import BACKENDS, EVICT, FUSED_MODES, BackendConfig, _reference_shape
from .prepare import ModelContext, _cuda, _release, fuse_model, prepare_model
from .scenario import Scenario, add_roofline, flags_for
from .store import IDENTITY, RowStore, RunConfig, default_method

log = logging.getLogger("measurement")


def base_row(rc: RunConfig, prov: dict) -> dict:
    d = dataclasses.asdict(rc)
    row = {"key": rc.key(prov.get("gpu", "cpu")), "gpu": prov.get("gpu", "cpu")}
    row.update({k: d[k] for k in IDENTITY if k != "gpu"})
    row.update({"trials": rc.trials, "compile_mode": rc.compile_mode if rc.backend == "compiled" else None})
    for k in ("gpu_name", "gpu_uuid", "driver", "cuda", "torch", "transformers", "bitsandbytes", "torchao",
              "git_commit", "code_sha"):
        row[k] = prov.get(k)
    row["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    row["config_json"] = json.dumps(d, sort_keys=True)
    return row


def static_check(rc: RunConfig) -> str | None:
    """Reasons a config cannot run whatever the machine (becomes an 'unsupported' row)."""
    from profiles import load

    from .precision import compiled_check

    s = rc.sparsity
    # the 16-bit precisions (methods.yaml torch_dtype): the weights torch's semi-structured kernels take
    sixteen = [m.id for m in load().methods_of("precision") if m.get("torch_dtype")]
    if s.startswith("2:4") and rc.precision not in sixteen:
        return f"{s} composes with {'/'.join(sixteen)} only (torch semi-structured kernels take 16-bit weights)"
    if rc.kv in EVICT and not rc.kv_budget:
        return f"{rc.kv} needs kv_budget"
    why = compiled_check(rc.precision, rc.batch) if rc.backend == "compiled" else None
    if why:
        return why
    return BACKENDS[rc.backend]().check(rc)


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    return "out of memory" in str(e).lower() and "cuda" in str(e).lower()


def _reason(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    return msg[:400]


class Runner:
    """Runs configs in this process, grouped so each (model, precision, sparsity) is built once."""

    def __init__(self, out_dir, *, device=None, deadline: float | None = None, catalog=None,
                 config_override=None, on_row: Callable[[dict], None] | None = None, measure_peaks: bool = True):
        import torch

        self.store = RowStore(out_dir)
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.deadline = deadline
        self.catalog = catalog
        self.config_override = config_override  # tests: a tiny transformers config instead of the profile's
        self.on_row = on_row
        self.measure_peaks = measure_peaks
        self._current = Path(out_dir) / "current.json"

    def peaks(self) -> dict:
        from .roofline import machine_peaks

        if not self.measure_peaks or not _cuda(self.device):
            return {}
        return machine_peaks()

    def _emit(self, row: dict) -> None:
        row["flags"] = ",".join(flags_for(row)) or None
        self.store.append(row)
        log.info("ROW %s %s %s %s %s B%s P%s G%s %s ms/tok=%s roof=%s spread=%s peak=%sGB wall=%ss %s", row.get("model"),
                 row.get("precision"), row.get("sparsity"), row.get("kv"), row.get("backend"), row.get("batch"),
                 row.get("prompt_len"), row.get("gen_len"), row.get("status"), _f(row.get("decode_ms_per_token")),
                 _f(row.get("decode_roofline_frac")), _f(row.get("decode_spread_pct")), _f(row.get("peak_mem_gb")),
                 row.get("wall_s"), (row.get("reason") or "")[:160])
        if self.on_row:
            self.on_row(row)

    def run(self, configs: Iterable[RunConfig]) -> list[dict]:
        from .env import provenance

        prov = provenance()
        gpu = prov.get("gpu", "cpu")
        done = self.store.done_keys()
        todo = [rc for rc in configs if rc.key(gpu) not in done]
        skipped = 0
        groups: dict[tuple, list[RunConfig]] = {}
        for rc in todo:
            groups.setdefault(rc.group, []).append(rc)
        emitted = []
        _tune_compile()
        peaks = self.peaks()
        for gkey, rcs in groups.items():
            rcs = sorted(rcs, key=_order)
            runnable = []
            for rc in rcs:
                why = static_check(rc)
                if why:
                    row = base_row(rc, prov)
                    row.update(status="unsupported", reason=why)
                    self._emit(row)
                    emitted.append(row)
                else:
                    runnable.append(rc)
            if not runnable:
                continue
            if self._late():
                skipped += len(runnable)
                continue
            emitted += self._run_group(runnable, prov, peaks)
        if skipped:
            log.warning("deadline reached: %d configs not started (resume to run them)", skipped)
        self._mark(None)
        return emitted

    def _late(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def _run_group(self, rcs: list[RunConfig], prov: dict, peaks: dict) -> list[dict]:
        import gc

        import torch

        from .method_base import Unsupported

        out = []
        ctx = None
        try:
            self._mark(rcs[0])
            ctx = prepare_model(rcs[0], self.device, catalog=self.catalog, config=self.config_override)
            if any(rc.backend == "compiled" and rc.compile_mode in FUSED_MODES for rc in rcs):
                fuse_model(ctx)
            log.info("built %s %s %s in %.1fs (%.2f GB)", *rcs[0].group[:3], ctx.apply_s, ctx.weights_bytes / 1e9)
        except Exception as e:  # the whole group shares the outcome
            status = ("unsupported" if isinstance(e, Unsupported) else
                      "does_not_fit" if _is_oom(e) else "error")
            if status == "error":
                log.error("group %s failed: %s", rcs[0].group, traceback.format_exc())
            for rc in rcs:
                row = base_row(rc, prov)
                row.update(status=status, reason=str(e) if status == "unsupported" else
                           _reason(e) if status == "error" else f"OOM while loading/compressing: {_reason(e)}")
                self._emit(row)
                out.append(row)
            ctx = None
            gc.collect()
            if _cuda(self.device):
                torch.cuda.empty_cache()
            return out
        try:
            compiled_failure, compiled_failure_batch, n_compiled_failures = None, 0, 0
            for i, rc in enumerate(rcs):
                if self._late():
                    log.warning("deadline reached: %d configs of group %s not started", len(rcs) - i, rc.group)
                    break
                if rc.backend == "compiled" and compiled_failure and (rc.batch <= compiled_failure_batch
                                                                      or n_compiled_failures >= 2):
                    # one compile failure per group is enough: each retry would recompile (minutes)
                    row = base_row(rc, prov)
                    row.update(status="unsupported", reason=f"not tried after the first compiled failure of this "
                                                            f"model/method: {compiled_failure}"[:400])
                    self._emit(row)
                    out.append(row)
                    continue
                r = self.run_one(rc, ctx, prov, peaks)
                out.append(r)
                if rc.backend == "compiled" and r.get("status") == "unsupported" and \
                        str(r.get("reason", "")).startswith("compiled backend failed"):
                    compiled_failure = r["reason"]
                    compiled_failure_batch = max(compiled_failure_batch, rc.batch)
                    n_compiled_failures += 1
        finally:
            ctx = None
            _release(self.device)
            self._mark(None)
        return out

    def _mark(self, rc: RunConfig | None) -> None:
        try:
            if rc is None:
                self._current.unlink(missing_ok=True)
            else:
                self._current.write_text(json.dumps(dataclasses.asdict(rc)))
        except Exception:
            pass

    def run_one(self, rc: RunConfig, ctx: ModelContext, prov: dict, peaks: dict) -> dict:
        from .method_base import Unsupported

        self._mark(rc)
        row = base_row(rc, prov)
        row.update(weights_source=ctx.weights_source, weights_gb=ctx.weights_bytes / 1e9,
                   step_weight_gb=ctx.step_weight_bytes / 1e9, method_notes="; ".join(ctx.notes) or None,
                   num_layers=ctx.config.num_hidden_layers, apply_s=round(ctx.apply_s, 2))
        t0 = time.perf_counter()
        try:
            backend = BACKENDS[rc.backend](BackendConfig(rc.backend, rc.compile_mode))
            res = Scenario(rc).run(ctx, backend)
            row.update(res)
            row["status"] = "ok"
            row["reason"] = None
            add_roofline(row, ctx, rc, peaks)
        except Exception as e:
            if _is_oom(e):
                row.update(status="does_not_fit", reason=f"OOM: {_reason(e)}")
            elif isinstance(e, Unsupported):
                row.update(status="unsupported", reason=str(e))
            elif rc.backend == "compiled":
                row.update(status="unsupported", reason=f"compiled backend failed: {_reason(e)}")
                log.error("%s: %s", rc, traceback.format_exc())
            else:
                row.update(status="error", reason=_reason(e))
                log.error("%s: %s", rc, traceback.format_exc())
            ctx.compiled = None
            _release(self.device)
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        self._emit(row)
        return row


def _f(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _order(rc: RunConfig):
    """Compiled first with batch 1 prompt 512 first (the first compiled shape is fully specialized)."""
    # then one that differs in both batch and prompt length, so that the second compile marks both dims
    # dynamic at once and later shapes reuse it
    return (rc.backend != "compiled", rc.kv != default_method("kv"), not _reference_shape(rc),
            rc.batch == 1 or rc.prompt_len == 512, rc.kv, rc.kv_budget or 0, rc.batch, rc.prompt_len)


def _tune_compile() -> None:
    """Dynamo settings for many shapes per model group; ADVISOR_CDT=1 turns on inductor's coordinate
    descent tuning (gpt-fast style; longer compile)."""
    try:
        import torch

        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
        if os.environ.get("ADVISOR_CDT") == "1":
            torch._inductor.config.coordinate_descent_tuning = True
    except Exception:
        pass
