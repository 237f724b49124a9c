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
    schema.Field("memory_fraction_of", (str,), required=False, choices=("total", "free")),
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
    # the engine cost model's facts (models/engine_speed.py): required of every serving engine (COST_MODEL_KEYS)
    schema.Field("prefill_chunk_tokens", (int,), required=False),
    schema.Field("max_batch_seqs", (int,), required=False),
    schema.Field("runtime_gb_per_gpu", schema.NUM, required=False),
    schema.Field("gemv_max_rows", (int,), required=False),
    schema.Field("prefill_in_decode_steps", (bool,), required=False),
    schema.Field("aiconfigurator_backend", (str,), required=False),
    schema.Field("harness_backend", (str,), required=False, choices=("compiled", "eager")),
    schema.Field("dtype_flag", (str,), required=False),
    schema.Field("model_file", (str,), required=False),
    schema.Field("decode_only_output_tool", (str,), required=False),
    schema.Field("measured_by", (str,), required=False),
    schema.Field("prefill_call_tokens", (int,), required=False),
    schema.Field("decode_gemv", (bool,), required=False),
    schema.Field("earlier_builds", (list,), required=False),
    schema.Field("kernel_priors_from", (str,), required=False),
    schema.Field("sources", (dict,), required=False),
)
COST_MODEL_KEYS = ("prefill_chunk_tokens", "max_batch_seqs", "runtime_gb_per_gpu", "gemv_max_rows",
                   "prefill_in_decode_steps")
# fields that need an entry in the engine's ``sources`` wherever they are set
CITED_KEYS = COST_MODEL_KEYS + ("aiconfigurator_backend", "harness_backend", "dtype_flag", "model_file",
                                "decode_only_output_tool", "measured_by", "prefill_call_tokens", "decode_gemv",
                                "kernel_priors_from")
PARALLELISM = ("tp", "layer", "row")
METHOD_ENTRY_KEYS = {"kernels", "flag", "requires", "source"}
KV_ENTRY_KEYS = {"flag", "archs", "requires", "source"}
EARLIER_BUILD_KEYS = {"until", "build_flag", "phase", "methods", "runs_as", "tag", "dequant_copy_bytes", "source"}
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
    def default_split(self) -> str:
        """How the engine splits a model over GPUs when the user names no split: the first of ``parallelism``."""
        return self.raw["parallelism"][0]

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

    def earlier_kernel(self, method: str, arch: str, phase: str, date: str | None,
                       build_flags: str | None = None) -> tuple[str, float] | None:
        """(kernel, bytes per weight of a dequantized copy) that a build published before an ``earlier_builds``
        entry's ``until`` date, or built with (any of) its ``build_flag``, ran ``method`` through in ``phase`` (prefill or
        decode), or None: today's kernel. An entry with ``runs_as`` names the method whose kernel ran; one with
        ``tag`` names today's kernel of the method as that build had it (``<kernel>~<tag>``, its own efficiencies)."""
        for e in self.raw.get("earlier_builds") or ():
            old = bool(date) and str(date) < e["until"]
            want = e.get("build_flag") or []
            flagged = bool(set([want] if isinstance(want, str) else want) & set(str(build_flags or "").split()))
            if (old or flagged) and e["phase"] == phase and method in e["methods"]:
                k = self.kernel(e.get("runs_as") or method, arch)
                if k:
                    return (f"{k}~{e['tag']}" if e.get("tag") else k), (float(e["dequant_copy_bytes"])
                                                                       if "dequant_copy_bytes" in e else None)
        return None

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
        if not e["parallelism"] or any(x not in PARALLELISM for x in e["parallelism"]):
            raise schema.SchemaError(f"{where}: parallelism must list some of {PARALLELISM}, got {e['parallelism']}")
        uncited = [k for k in CITED_KEYS if k in e and k not in (e.get("sources") or {})]
        if uncited:
            raise schema.SchemaError(f"{where}: {uncited} need an entry in 'sources'")
        for i, b in enumerate(e.get("earlier_builds") or ()):
            w = f"{where}: earlier_builds[{i}]"
            if (not isinstance(b, dict) or set(b) - EARLIER_BUILD_KEYS or not {"until", "phase", "methods", "source"} <= set(b)
                    or ("runs_as" in b) == ("tag" in b)):
                raise schema.SchemaError(f"{w}: needs until, phase, methods, source and one of runs_as, tag (and may have "
                                         f"build_flag, dequant_copy_bytes), got {sorted(b) if isinstance(b, dict) else b}")
            if not (isinstance(b["until"], str) and len(b["until"]) == 10 and b["until"][4] == b["until"][7] == "-"):
                raise schema.SchemaError(f"{w}: until must be a quoted YYYY-MM-DD date, got {b['until']!r}")
            if b["phase"] not in ("prefill", "decode"):
                raise schema.SchemaError(f"{w}: phase must be prefill or decode, got '{b['phase']}'")
            unknown = [m for m in [*b["methods"], *([b["runs_as"]] if "runs_as" in b else [])] if m not in (e["methods"] if isinstance(e["methods"], dict) else {})]
            if unknown:
                raise schema.SchemaError(f"{w}: methods {unknown} are not among the engine's methods")
        if e["methods"] == "*":
            continue
        missing = [k for k in COST_MODEL_KEYS if k not in e]
        if missing:
            raise schema.SchemaError(f"{where}: a serving engine needs the cost model's {missing}")
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
    serving = {e["id"] for e in entries if e["methods"] != "*"}
    for e in entries:
        sib = e.get("kernel_priors_from")
        if sib is not None and (sib not in serving or sib == e["id"] or (next(x for x in entries if x["id"] == sib)
                                                                       .get("kernel_priors_from"))):
            raise schema.SchemaError(f"engines.yaml: engine '{e['id']}': kernel_priors_from must name another serving "
                                     f"engine that takes no priors itself ({sorted(serving - {e['id']})}), got '{sib}'")
    for what, ids in (("'default: true'", [e["id"] for e in entries if e.get("default")]),
                      ("methods: '*' (the harness)", [e["id"] for e in entries if e["methods"] == "*"])):
        if len(ids) != 1:
            raise schema.SchemaError(f"engines.yaml: exactly one engine needs {what}, found {ids}")
    return entries
