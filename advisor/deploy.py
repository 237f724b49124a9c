"""Command lines that deploy a recommended candidate (vLLM where it supports the method, transformers)."""
from __future__ import annotations

from profiles import LLM, Catalog

from models.candidate import Candidate


def vllm_command(cat: Catalog, llm: LLM, cand: Candidate, context: int, batch: int, num_gpus: int,
                 has_bf16: bool = True) -> str | None:
    """A ``vllm serve`` line, or None where vLLM has no path for one of the methods."""
    prec = cat.methods[cand.precision]
    if prec.get("vllm") is None or cand.sparsity != "dense" or cand.kv_budget:
        return None
    parts = ["vllm serve", llm.hf_id, f"--max-model-len {context}", f"--max-num-seqs {batch}"]
    flag = prec.get("vllm")
    if flag.startswith("--dtype"):
        parts.append(flag if has_bf16 or "bfloat16" not in flag else "--dtype float16")
    else:
        parts.append("--dtype " + ("bfloat16" if has_bf16 else "float16"))
        parts.append(flag)
    if cand.kv != "kv-fp16":
        kvflag = cat.methods[cand.kv].get("vllm")
        if not kvflag:
            return None
        parts.append(kvflag)
    if num_gpus > 1:
        parts.append(f"--tensor-parallel-size {num_gpus}")
    return " ".join(parts)


def transformers_snippet(cat: Catalog, llm: LLM, cand: Candidate, has_bf16: bool = True) -> str:
    prec = cat.methods[cand.precision]
    dtype = "torch.bfloat16" if has_bf16 else "torch.float16"
    q = prec.get("transformers") or ""
    lines = [f"model = AutoModelForCausalLM.from_pretrained('{llm.hf_id}', torch_dtype={dtype}, device_map='auto'"
             + (f", quantization_config={q}" if q and not q.startswith("torch_dtype") else "") + ")"]
    if cand.sparsity.startswith("2:4"):
        lines.append(f"# prune to 2:4 ({cand.sparsity.split('-', 1)[1]}), then torch.sparse.to_sparse_semi_structured "
                     "on each Linear weight")
    elif cand.dropped_layers:
        lines.append(f"# drop {cand.dropped_layers} decoder layers chosen by ShortGPT block influence "
                     "(del model.model.layers[i] for the lowest-scoring i)")
    kv = cat.methods[cand.kv]
    if cand.kv_budget:
        lines.append(f"# KV policy {cand.kv} with a {cand.kv_budget}-token budget (e.g. NVIDIA kvpress presses)")
    elif kv.get("transformers"):
        lines.append(f"model.generate(..., {kv.get('transformers')})")
    return "\n".join(lines)
