"""The engine catalog (``profiles/data/engines.yaml``): which methods an engine runs on which GPU
architecture, through which kernel, and how a launch line is built."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import schema

ENGINE_FIELDS = (
    schema.Field("id", (str,)),
    schema.Field("name", (str,)),
    schema.Field("version", (str,)),
    schema.Field("default", (bool,), required=False),
    schema.Field("batching", (str,), choices=("continuous", "slots", "static")),
    schema.Field("memory_fraction", schema.NUM),
    schema.Field("memory_fraction_source", (str,)),
    schema.Field("parallelism", (list,)),
    schema.Field("kv", (dict, str)),
    schema.Field("sparsity", (list, str)),
    schema.Field("methods", (dict, str)),
    schema.Field("launch", (str,)),
    schema.Field("tp_flag", (str,)),
    schema.Field("args", (list,)),
    schema.Field("quantization_values", (list,)),
    schema.Field("args_source", (str,)),
    schema.Field("not_run", (list,), required=False),
    schema.Field("not_run_source", (str,), required=False),
    schema.Field("notes", (str,), required=False),
)
METHOD_ENTRY_KEYS = {"kernels", "flag", "requires", "source"}
KV_ENTRY_KEYS = {"flag", "archs", "requires", "source"}
ARCHS = ("sm70", "sm75", "sm80", "sm86", "sm89", "sm90", "sm100", "sm120")


def arch_of(cc: tuple[int, int]) -> str:
    """'sm86' for compute capability (8, 6)."""
    return f"sm{cc[0]}{cc[1]}"


@dataclass(frozen=True)
class Engine:
    id: str
    name: str
    version: str
    raw: dict = field(repr=False, compare=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def runs_everything(self) -> bool:
        """The harness engine: every catalog method, subject to the method's own min_cc."""
        return self.raw["methods"] == "*"

    @property
    def label(self) -> str:
        return f"{self.id} {self.version}"

    def method_ids(self) -> list[str]:
        return [] if self.runs_everything else list(self.raw["methods"])

    def kernel(self, method: str, arch: str) -> str | None:
        """Kernel id that runs ``method`` on ``arch``, or None where it does not run."""
        if self.runs_everything:
            return None
        m = self.raw["methods"].get(method)
        return (m or {}).get("kernels", {}).get(arch)

    def archs_of(self, method: str) -> list[str]:
        m = (self.raw["methods"] if not self.runs_everything else {}).get(method) or {}
        return sorted(m.get("kernels", {}), key=ARCHS.index)

    def method_entry(self, method: str) -> dict:
        return {} if self.runs_everything else (self.raw["methods"].get(method) or {})

    def kv_entry(self, kv: str) -> dict | None:
        kvs = self.raw["kv"]
        if kvs == "*":
            return {}
        return kvs.get(kv)

    def runs_kv(self, kv: str, arch: str) -> bool:
        e = self.kv_entry(kv)
        if e is None:
            return False
        return "archs" not in e or arch in e["archs"]

    def runs_sparsity(self, sparsity_method: str) -> bool:
        s = self.raw["sparsity"]
        return s == "*" or sparsity_method in s

    def flag(self, method: str, arch: str) -> str | None:
        f = self.method_entry(method).get("flag")
        if isinstance(f, dict):
            return f.get(arch, f.get("default"))
        return f


def check_engines(doc: Any, method_ids: set[str]) -> list[dict]:
    """Schema of engines.yaml, plus: every method and kernel arch named exists, every entry cited."""
    entries = schema.check_catalog(doc, "engines", ENGINE_FIELDS, "engines.yaml")
    for e in entries:
        where = f"engines.yaml: engine '{e['id']}'"
        if e["methods"] == "*":
            continue
        for mid, m in e["methods"].items():
            if mid not in method_ids:
                raise schema.SchemaError(f"{where}: method '{mid}' is not in methods.yaml")
            extra = set(m) - METHOD_ENTRY_KEYS
            if extra:
                raise schema.SchemaError(f"{where}: method '{mid}': unknown keys {sorted(extra)}")
            if not m.get("source"):
                raise schema.SchemaError(f"{where}: method '{mid}' has no source")
            bad = [a for a in m.get("kernels", {}) if a not in ARCHS]
            if bad or not m.get("kernels"):
                raise schema.SchemaError(f"{where}: method '{mid}': kernels need arch keys among {ARCHS}, got {bad}")
        for kid, k in (e["kv"] if isinstance(e["kv"], dict) else {}).items():
            if kid not in method_ids:
                raise schema.SchemaError(f"{where}: KV method '{kid}' is not in methods.yaml")
            extra = set(k or {}) - KV_ENTRY_KEYS
            if extra:
                raise schema.SchemaError(f"{where}: KV method '{kid}': unknown keys {sorted(extra)}")
            if (k or {}).get("flag") and not k.get("source"):
                raise schema.SchemaError(f"{where}: KV method '{kid}' has no source")
    return entries
