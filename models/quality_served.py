"""The quality cost model as recommend, plan, compare and predict serve it: :class:`QualityModel`'s
answers per (model, component, budget, quantity), kept on disk (``profiles.cache``) under a key made of
every input (the published and measured quality rows, the method and model catalogs, and the source of
the quality modules), so a warm start neither parses the published rows nor refits the regression. A
miss builds the full model once and computes the answer; a changed input is a new key, never a stale one.
"""
from __future__ import annotations

import atexit
from functools import lru_cache
from pathlib import Path

from profiles import Catalog, cache

from .quality import PPL, QualityModel, fixed_component
from .quality_rows import EVICTION, SMALL_MODEL_CSV, ComponentLoss

_SOURCES = ("quality.py", "quality_rows.py", "quality_fit.py", "quality_pool.py", "quality_evict.py", "quality_served.py",
            "conformal.py")


def _key(cat: Catalog) -> str:
    here = Path(__file__).resolve().parent
    parts = [(cat.data_dir / f).read_bytes() for f in ("quality_published.yaml", "methods.yaml", "llms.yaml")]
    parts += [(here / f).read_bytes() for f in _SOURCES]
    parts.append(SMALL_MODEL_CSV.read_bytes() if SMALL_MODEL_CSV.exists() else b"")
    return cache.digest(*parts)


class ServedQuality(QualityModel):
    """A :class:`QualityModel` whose component answers come from the disk table when present; the rows and
    the regression load only on a miss (``_model``). Attributes it does not hold come from the full model."""

    def __init__(self, cat: Catalog):  # no QualityModel.__init__: nothing is parsed or fitted up front
        self.catalog = cat
        self._key = _key(cat)
        self._table = cache.get("quality-components", self._key) or {}
        self._new: dict = {}
        self._model: QualityModel | None = None
        atexit.register(self.flush)

    def __getattr__(self, name):  # only for attributes this object lacks (published, fitted, widths, ...)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.full(), name)

    def full(self) -> QualityModel:
        if self._model is None:
            self._model = QualityModel.from_catalog(self.catalog)
        return self._model

    def component(self, llm, comp: tuple, budget: int | None = None, kind: str = PPL,
                  context: int | None = None) -> ComponentLoss | None:
        fixed = fixed_component(comp, budget, context)
        if fixed is not None:
            return fixed
        # an eviction policy's answer depends on the context too (the law in context/budget)
        k = f"{llm.id}|{comp[0]}|{comp[1]}|{budget}|{kind}" + (f"|{context}" if comp[1] in EVICTION else "")
        if k in self._table:
            v = self._table[k]
            return None if v is None else ComponentLoss(comp, v[0], v[1], v[2], v[3], v[4], tuple(v[5]),
                                                        v[6] if len(v) > 6 else None)
        c = self.full().component(llm, comp, budget, kind, context)
        v = None if c is None else [c.loss, c.low, c.high, c.rule, c.metric, list(c.cites), c.evidence_half]
        self._table[k] = self._new[k] = v
        return c

    def flush(self) -> None:
        """Add this process's new answers to the disk table (merged with what another process wrote)."""
        if not self._new:
            return
        table = cache.get("quality-components", self._key) or {}
        table.update(self._new)
        cache.put("quality-components", self._key, table)
        self._new = {}


@lru_cache(maxsize=2)
def served(cat: Catalog) -> ServedQuality:
    return ServedQuality(cat)
