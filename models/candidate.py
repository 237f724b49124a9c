"""A deployment candidate (precision, sparsity, KV policy) and the scenario it is judged in."""
from __future__ import annotations

from dataclasses import dataclass


def _catalog_ids() -> tuple[str, str, str, str]:
    """The default precision, sparsity and KV method, and the layer-dropping method (the sparsity with
    ``drop_fractions``), from profiles/data/methods.yaml."""
    from profiles import load
    cat = load()
    drop = next(m.id for m in cat.methods_of("sparsity") if m.get("drop_fractions"))
    return cat.default_method("precision"), cat.default_method("sparsity"), cat.default_method("kv"), drop


DEFAULT_PRECISION, DEFAULT_SPARSITY, DEFAULT_KV, DROP_LAYERS = _catalog_ids()


@dataclass(frozen=True)
class Candidate:
    precision: str
    sparsity: str = DEFAULT_SPARSITY  # the default (no pruning) | 2:4-* | drop-N
    kv: str = DEFAULT_KV
    kv_budget: int | None = None     # tokens kept per sequence, eviction policies only

    @property
    def dropped_layers(self) -> int:
        return int(self.sparsity.split("-")[1]) if self.sparsity.startswith("drop-") else 0

    @property
    def sparsity_method(self) -> str:
        return DROP_LAYERS if self.sparsity.startswith("drop-") else self.sparsity

    @property
    def short(self) -> str:
        """Compact label: the precision, then only the non-default parts."""
        parts = [self.precision] + ([self.sparsity] if self.sparsity != DEFAULT_SPARSITY else [])
        if self.kv != DEFAULT_KV:
            parts.append(f"{self.kv}@{self.kv_budget}" if self.kv_budget else self.kv)
        return "+".join(parts)

    @property
    def label(self) -> str:
        kv = f"{self.kv}@{self.kv_budget}" if self.kv_budget else self.kv
        return f"{self.precision} + {self.sparsity} + {kv}"


@dataclass(frozen=True)
class Scenario:
    """Batch of ``batch`` sequences, each with ``prompt_len`` prompt tokens and ``gen_len`` new ones.

    ``backend``: ``compiled`` (static cache + CUDA graphs, a tuned deployment) or ``eager``
    (plain transformers). ``num_gpus`` > 1 means tensor parallelism over that many GPUs.
    """

    batch: int = 1
    prompt_len: int = 1024
    gen_len: int = 256
    backend: str = "compiled"
    num_gpus: int = 1

    @property
    def context(self) -> int:
        return self.prompt_len + self.gen_len
