"""Launch lines for the chosen engine, built from the engine catalog (profiles/data/engines.yaml).

Each line uses only the option names the catalog lists for that engine version (``args``) and only the
``--quantization`` values it accepts; what the user must have first (a quantized checkpoint, a GGUF
file) is returned separately in ``requires``, never inside the command.
"""
from __future__ import annotations

from profiles import GPU, LLM, Catalog
from profiles.dtypes import BF16
from profiles.engines import arch_of

from models.candidate import Candidate


def launch(cat: Catalog, engine: str, gpu: GPU, llm: LLM, cand: Candidate, context: int, batch: int,
           num_gpus: int = 1, split: str | None = None) -> dict:
    """{engine, command, requires}: one command a user can paste, and what it needs first."""
    eng = cat.engines[engine]
    arch = arch_of(gpu.cc) if gpu.cc else ""
    requires: list[str] = []
    if eng.runs_everything:
        return {"engine": eng.label, "command": transformers_snippet(cat, llm, cand, bool(gpu.peak_tflops(BF16))),
                "requires": requires}
    m = eng.method_entry(cand.precision)
    if m.get("requires"):
        requires.append(m["requires"] + f" ({llm.hf_id})")
    if cand.dropped_layers:
        requires.append(f"a checkpoint of {llm.id} with {cand.dropped_layers} decoder layers removed "
                        "(ShortGPT block influence) and num_hidden_layers set to match")
    dtype = ""
    flag = eng.flag(cand.precision, arch)
    torch_dtype = cat.methods[cand.precision].get("torch_dtype")  # unquantized 16-bit weights: dtype_flag, no flag
    if eng.get("dtype_flag") and torch_dtype:
        flag = None
        dtype = eng.get("dtype_flag").format(torch_dtype=torch_dtype if gpu.peak_tflops(BF16) else "float16")
    model = llm.hf_id
    ctx_total = context * batch
    if eng.get("model_file"):  # a local file (llama.cpp's GGUF), named after the model and the GGUF type
        model = eng.get("model_file").format(model_id=llm.id, gguf_type=cand.precision.removeprefix("gguf-").upper())
    cmd = eng.get("launch").format(hf_id=model, dtype=dtype, context=context, batch=batch, gguf=model,
                                   context_total=ctx_total)
    parts = [cmd]
    if flag:
        parts.append(flag)
    kv = eng.kv_entry(cand.kv) or {}
    if kv.get("flag"):
        parts.append(kv["flag"])
    if kv.get("requires"):
        requires.append(kv["requires"])
    if num_gpus > 1:
        parts.append(eng.get("tp_flag").format(n=num_gpus, split=split or eng.default_split))
    return {"engine": eng.label, "command": " ".join(" ".join(parts).split()), "requires": requires}


def transformers_snippet(cat: Catalog, llm: LLM, cand: Candidate, has_bf16: bool = True) -> str:
    """The harness engine's Python lines; each method's setting for it is the methods.yaml field named by the
    harness engine's id (its from_pretrained quantization_config, or its generate() cache arguments)."""
    harness = cat.harness_engine
    prec = cat.methods[cand.precision]
    dtype = "torch.bfloat16" if has_bf16 else "torch.float16"
    q = prec.get(harness) or ""
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
    elif kv.get(harness):
        lines.append(f"model.generate(..., {kv.get(harness)})")
    return "\n".join(lines)


def option_names(command: str) -> list[str]:
    """The option names a command line uses (tokens starting with '-', not negative numbers)."""
    toks = command.split()
    if toks[:2] == ["python", "-m"]:  # the interpreter's own option, not the engine's
        toks = toks[3:]
    return [t for t in toks if t.startswith("-") and not t.lstrip("-").replace(".", "").isdigit()]
