"""Enumerate (precision, sparsity, KV policy) candidates and check what the hardware can run."""
from __future__ import annotations

from profiles import GPU, LLM, Catalog

from models.candidate import Candidate

AMD_OK = {"fp16", "bf16", "fp8"}  # the advisor's catalog has no ROCm path for the others


def enumerate_candidates(cat: Catalog, llm: LLM, context: int) -> list[Candidate]:
    precisions = [m.id for m in cat.methods_of("precision")]
    sparsities = []
    for m in cat.methods_of("sparsity"):
        if m.id == "drop-layers":
            for f in m.get("drop_fractions", []):
                n = round(f * llm.num_hidden_layers)
                if 0 < n < llm.num_hidden_layers:
                    sparsities.append((f"drop-{n}", m))
        else:
            sparsities.append((m.id, m))
    kvs = []
    for m in cat.methods_of("kv"):
        budgets = m.get("budgets")
        if budgets:
            kvs.extend((m.id, b) for b in budgets if b < context)
        else:
            kvs.append((m.id, None))
    out = []
    for p in precisions:
        for s, sm in sparsities:
            comp = sm.get("composes_with") or ["*"]
            if "*" not in comp and p not in comp:
                continue
            for k, b in kvs:
                out.append(Candidate(p, s, k, b))
    return out


def hardware_block(cat: Catalog, gpu: GPU, cand: Candidate) -> str | None:
    """Why this GPU cannot run the candidate (fast), or None."""
    for mid in (cand.precision, cand.sparsity_method, cand.kv):
        m = cat.methods[mid]
        if gpu.vendor == "amd":
            if m.kind == "precision" and mid not in AMD_OK:
                return f"{mid}: no ROCm kernel for {gpu.name} in this advisor's catalog"
            if m.kind == "sparsity" and mid.startswith("2:4"):
                return f"{mid}: no ROCm 2:4 kernel path in this advisor's catalog"
        elif m.min_cc and gpu.cc < m.min_cc_tuple:
            return f"{mid} needs compute capability {m.min_cc}+ ({gpu.name} is {gpu.compute_capability})"
        if "sparse_2_4" in (m.get("needs") or []) and not gpu.sparse_2_4:
            return f"{mid} needs 2:4 sparse tensor cores ({gpu.name} has none)"
    if cand.precision == "bf16" and not gpu.peak_tflops("bf16"):
        return f"bf16 needs bf16 tensor cores ({gpu.name} has none): use fp16"
    if cand.precision == "fp8" and not gpu.peak_tflops("fp8"):
        return f"fp8 needs fp8 tensor cores ({gpu.name} has none)"
    if cand.precision in ("w8a8", "bnb-int8") and gpu.tflops_dense.get("int8") is None and gpu.vendor == "nvidia" \
            and gpu.cc < (7, 5):
        return f"{cand.precision} needs int8 tensor cores (sm75+)"
    return None
