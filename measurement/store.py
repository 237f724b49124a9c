"""A measured configuration's identity and the store its rows land in.

* :class:`RunConfig` - one row's identity (model, methods, backend, batch, prompt_len and gen_len in tokens,
  weights) plus how it is timed (trials, warm-up runs, compile mode).
* :func:`config_key` - the identity as one string (``k=v|k=v|...``); a resumed sweep skips rows whose key
  is already stored.
* :class:`RowStore` - ``<out>/rows.jsonl``, one JSON object per line, flushed and fsynced per row; an
  ``error`` row is retried once.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .dataset import DEFAULT_COMPILE_MODE  # one definition, beside the row ids that use it


def default_method(kind: str) -> str:
    """The catalog's default method of ``kind`` (precision|sparsity|kv; methods.yaml ``default``): what a
    configuration has when it names none."""
    from profiles import load

    return load().default_method(kind)


IDENTITY = ("gpu", "model", "precision", "sparsity", "kv", "kv_budget", "backend", "batch", "prompt_len",
            "gen_len", "weights")


@dataclass(frozen=True)
class RunConfig:
    model: str
    precision: str = default_method("precision")
    sparsity: str = default_method("sparsity")
    kv: str = default_method("kv")
    kv_budget: int | None = None
    backend: str = "compiled"
    batch: int = 1
    prompt_len: int = 512
    gen_len: int = 128
    weights: str = "random"
    trials: int = 3
    warmup: int = 1
    compile_mode: str = DEFAULT_COMPILE_MODE

    def ident(self, gpu: str) -> dict:
        d = dataclasses.asdict(self)
        d["gpu"] = gpu
        return {k: d[k] for k in IDENTITY + ("compile_mode",)}

    def key(self, gpu: str) -> str:
        return config_key(self.ident(gpu))

    @property
    def group(self) -> tuple:
        """Configs sharing one built + compressed model."""
        return (self.model, self.precision, self.sparsity, self.weights)



def config_key(d: dict) -> str:
    """The identity of a measured configuration. A compiled run's non-default compile mode joins it (it
    changes the measurement); the default mode adds nothing, so keys of earlier rows are unchanged."""
    parts = []
    for k in IDENTITY:
        v = d.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            v = "-"
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        parts.append(f"{k}={v}")
    cm = d.get("compile_mode")
    if isinstance(cm, str) and cm and cm != DEFAULT_COMPILE_MODE and d.get("backend") == "compiled":
        parts.append(f"compile_mode={cm}")
    return "|".join(parts)


# ----------------------------------------------------------------------------------------- storage
class RowStore:
    """Append-only JSON lines; every row is flushed and fsynced before the next config starts."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "rows.jsonl"

    def rows(self) -> list[dict]:
        from .dataset import read_jsonl

        return read_jsonl(self.path) if self.path.exists() else []

    def done_keys(self, retry_errors: bool = True) -> set[str]:
        keys, errors = set(), {}
        for r in self.rows():
            k = r.get("key") or config_key(r)
            if r.get("status") == "error" and retry_errors:
                errors[k] = errors.get(k, 0) + 1
                continue
            keys.add(k)
        # an error row is retried once; after a second error it counts as done
        keys |= {k for k, n in errors.items() if n >= 2}
        return keys

    def append(self, row: dict) -> None:
        torn = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, 2)
                torn = fh.read(1) != b"\n"  # a hard kill mid-write left a partial line: start a new one
        with open(self.path, "a", encoding="utf-8") as fh:
            if torn:
                fh.write("\n")
            fh.write(json.dumps(row, default=_json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)
