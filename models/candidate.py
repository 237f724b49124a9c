"""A deployment candidate (precision, sparsity, KV policy) and the scenario it is judged in."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    precision: str
    sparsity: str = "dense"          # dense | 2:4-* | drop-N
    kv: str = "kv-fp16"
    kv_budget: int | None = None     # tokens kept per sequence, eviction policies only

    @property
    def dropped_layers(self) -> int:
        return int(self.sparsity.split("-")[1]) if self.sparsity.startswith("drop-") else 0

    @property
    def sparsity_method(self) -> str:
        return "drop-layers" if self.sparsity.startswith("drop-") else self.sparsity

    @property
    def short(self) -> str:
        """Compact label: the precision, then only the non-default parts."""
        parts = [self.precision] + ([self.sparsity] if self.sparsity != "dense" else [])
        if self.kv != "kv-fp16":
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
