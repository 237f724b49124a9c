"""What can run where: (precision, sparsity, KV policy) candidates, and the reason a GPU or an engine
cannot run one (the engine catalog for serving engines; each method's min_cc for the harness)."""
from __future__ import annotations

from profiles import GPU, LLM, Catalog
from profiles.dtypes import BF16, FP16, FP8, INT8

from profiles.engines import Engine, arch_of

from .candidate import Candidate


def enumerate_candidates(cat: Catalog, llm: LLM, context: int) -> list[Candidate]:
    precisions = [m.id for m in cat.methods_of("precision")]
    sparsities = []
    for m in cat.methods_of("sparsity"):
        if fractions := m.get("drop_fractions"):
            for f in fractions:
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
            if m.kind == "precision" and not m.get("rocm"):
                return f"{mid}: no ROCm kernel for {gpu.name} in this advisor's catalog"
            if m.kind == "sparsity" and mid.startswith("2:4"):
                return f"{mid}: no ROCm 2:4 kernel path in this advisor's catalog"
        elif m.min_cc and gpu.cc < m.min_cc_tuple:
            return f"{mid} needs compute capability {m.min_cc}+ ({gpu.name} is {gpu.compute_capability})"
        if "sparse_2_4" in (m.get("needs") or []) and not gpu.sparse_2_4:
            return f"{mid} needs 2:4 sparse tensor cores ({gpu.name} has none)"
    dt = cat.methods[cand.precision].get("matmul_dtype")  # the tensor cores its matmuls need
    if dt in (BF16, FP8) and not gpu.peak_tflops(dt):
        hint = f": use {FP16}" if dt == BF16 else ""
        return f"{cand.precision} needs {dt} tensor cores ({gpu.name} has none){hint}"
    if dt == INT8 and gpu.tflops_dense.get(INT8) is None and gpu.vendor == "nvidia" and gpu.cc < (7, 5):
        return f"{cand.precision} needs int8 tensor cores (sm75+)"
    return None


def tp_sizes(llm: LLM, max_n: int = 8) -> list[int]:
    """Tensor-parallel degrees that divide both the attention heads and the KV heads."""
    return [n for n in range(1, max_n + 1) if llm.num_attention_heads % n == 0 and llm.num_key_value_heads % n == 0]


def engine_block(cat: Catalog, eng: Engine, gpu: GPU, llm: LLM, cand: Candidate, num_gpus: int = 1,
                 split: str | None = None) -> str | None:
    """Why ``eng`` cannot run the candidate on ``gpu`` (x ``num_gpus``), naming the engines that can; None
    when it can."""
    if num_gpus > 1:
        kinds = eng.get("parallelism") or []
        if "tp" not in kinds:  # an engine that splits by layer or row (llama.cpp's --split-mode)
            if (split or eng.default_split) not in kinds:
                return f"{eng.id} splits a model over GPUs by {' or '.join(kinds)}, not '{split}'"
        elif "tp" in kinds:
            valid = tp_sizes(llm, max(8, num_gpus))
            if num_gpus not in valid:
                return (f"tensor parallelism over {num_gpus} GPUs does not divide {llm.id}'s "
                        f"{llm.num_attention_heads} attention and {llm.num_key_value_heads} KV heads; valid sizes: "
                        f"{', '.join(map(str, valid))}")
    if eng.runs_everything:
        for mid in (cand.precision, cand.kv):
            if mid in (eng.get("not_run") or []):
                others = [e.id for e in cat.engines.values() if e.id != eng.id and
                          (e.kernel(mid, arch_of(gpu.cc)) or e.kv_entry(mid) is not None)]
                return f"{eng.id} (the harness) does not run {mid}; engines that do: {', '.join(others)}"
        return hardware_block(cat, gpu, cand)
    if gpu.vendor != "nvidia":
        return f"{eng.id}: this advisor models NVIDIA GPUs only for {eng.name}"
    arch = arch_of(gpu.cc)
    if eng.kernel(cand.precision, arch) is None:
        where = eng.archs_of(cand.precision)
        others = [e.id for e in cat.engines.values() if e.id != eng.id and
                  (e.kernel(cand.precision, arch) or (e.runs_everything and cand.precision not in
                                                      (e.get("not_run") or []) and not hardware_block(cat, gpu, cand)))]
        why = (f"{eng.id} {eng.version} runs {cand.precision} on {', '.join(where)} only" if where
               else f"{eng.id} {eng.version} does not run {cand.precision}")
        return (f"{why} ({gpu.name} is {arch}); engines that run it there: "
                f"{', '.join(others) if others else 'none in the catalog'}")
    if not eng.runs_sparsity(cand.sparsity_method):
        others = [e.id for e in cat.engines.values() if e.runs_sparsity(cand.sparsity_method) and e.id != eng.id]
        return f"{eng.id} has no {cand.sparsity_method} path; engines that run it: {', '.join(others)}"
    if cand.kv_budget or not eng.runs_kv(cand.kv, arch):
        others = [e.id for e in cat.engines.values() if e.id != eng.id and e.runs_kv(cand.kv, arch)]
        return (f"{eng.id} has no {cand.kv} KV cache on {arch}; engines that run it: "
                f"{', '.join(others) if others else 'none in the catalog'}")
    return None
