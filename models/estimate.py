"""A predicted figure with its interval and provenance."""
from __future__ import annotations

from dataclasses import asdict, dataclass

SOURCES = ("measured", "published", "analytical", "fitted", "transferred")  # transferred: same method, other models (quality)


@dataclass(frozen=True)
class Estimate:
    """``value`` with a ``[low, high]`` interval (about 90%) in ``unit``.

    ``source`` is one of :data:`SOURCES`; ``detail`` says which cost model, table or paper.
    """

    value: float
    low: float
    high: float
    unit: str
    source: str
    detail: str = ""

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if not (self.low <= self.value <= self.high):
            raise ValueError(f"interval [{self.low}, {self.high}] does not hold {self.value}")

    @classmethod
    def rel(cls, value: float, rel_err: float, unit: str, source: str, detail: str = "") -> "Estimate":
        """A symmetric relative interval in log space: value / (1+e) .. value * (1+e)."""
        return cls(value, value / (1 + rel_err), value * (1 + rel_err), unit, source, detail)

    def scale(self, k: float, unit: str | None = None) -> "Estimate":
        lo, hi = sorted((self.low * k, self.high * k))
        return Estimate(self.value * k, lo, hi, unit or self.unit, self.source, self.detail)

    def as_dict(self) -> dict:
        return asdict(self)
