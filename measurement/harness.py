"""The measurement harness: backend x scenario x launcher (optimum-benchmark style), and its worker entry
point ``python -m measurement.harness --plan PLAN.json --out DIR [--deadline T]`` (what
:class:`~measurement.launch.SubprocessLauncher` starts, one child per model group).

The parts live in their own modules (re-exported here):

* :mod:`measurement.store` - :class:`RunConfig`, one row's identity (model, methods, backend, batch,
  prompt_len, gen_len, weights); :func:`config_key`; :class:`RowStore`, ``<out>/rows.jsonl``, one JSON
  object per line, flushed and fsynced per row; a resumed sweep skips every config key already there
  (except ``error`` rows, retried once).
* :mod:`measurement.prepare` - build the model and apply its sparsity then its precision (:class:`ModelContext`).
* :mod:`measurement.backends` - :class:`EagerBackend` (plain transformers, DynamicCache, one Python call per
  token: what most users run) and :class:`CompiledBackend` (StaticCache + ``torch.compile``, CUDA graphs
  through mode ``reduce-overhead``: what a tuned deployment gets). Eager prefill feeds both.
* :mod:`measurement.scenario` - :class:`Scenario`: warm-up, then ``trials`` x (prefill of
  ``batch x prompt_len`` tokens, decode of ``gen_len`` tokens), each inside an NVML/synchronize window;
  medians, spread, memory, roofline.
* :mod:`measurement.runner` - :class:`Runner`: configs grouped so each model/method is built once.
* :mod:`measurement.launch` - :class:`InProcessLauncher` and :class:`SubprocessLauncher` (one child per model
  group, so an out-of-memory or a crash is isolated; a crash becomes an ``error`` row and the child restarts).

Rows have ``status`` ok | does_not_fit | unsupported | error, and ``reason``.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from .backends import (BACKENDS, FUSED_MODES, PREFILL_CHUNK_TOKENS, REGIONAL_MODES, BackendConfig,
                       CompiledBackend, EagerBackend, prefill_chunk)
from .dataset import DEFAULT_COMPILE_MODE
from .launch import InProcessLauncher, SubprocessLauncher, die_with_parent
from .prepare import ModelContext, calib_batches_for, fuse_model, prepare_model
from .runner import Runner, _tune_compile, base_row, static_check
from .scenario import Scenario, add_roofline, flags_for, summarize
from .store import IDENTITY, RowStore, RunConfig, config_key

__all__ = ["BACKENDS", "DEFAULT_COMPILE_MODE", "FUSED_MODES", "IDENTITY", "PREFILL_CHUNK_TOKENS", "REGIONAL_MODES",
           "BackendConfig", "CompiledBackend", "EagerBackend", "InProcessLauncher", "ModelContext", "RowStore",
           "RunConfig", "Runner", "Scenario", "SubprocessLauncher", "add_roofline", "base_row",
           "calib_batches_for", "config_key", "die_with_parent", "flags_for", "fuse_model", "main",
           "prefill_chunk", "prepare_model", "static_check", "summarize"]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="measurement worker (one process runs a plan of configs)")
    ap.add_argument("--plan", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    fh = logging.FileHandler(Path(a.out) / "log.txt")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("measurement").addHandler(fh)
    _tune_compile()
    configs = [RunConfig(**d) for d in json.loads(Path(a.plan).read_text())]
    Runner(a.out, deadline=a.deadline).run(configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
