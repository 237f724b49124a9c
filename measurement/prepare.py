"""Model preparation for a measurement: build the model of a :class:`~measurement.store.RunConfig` and
apply its sparsity then its precision (:func:`prepare_model`), merge projections for the fused compiled
modes (:func:`fuse_model`), and release compiled graphs and cached GPU memory between groups. A
:class:`ModelContext` holds the prepared model with its weight sizes in bytes (resident, and streamed per
decode step), its matmul parameter count and the preparation time in seconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .store import RunConfig


@dataclass
class ModelContext:
    model: object
    config: object
    weights_source: str
    weights_bytes: float
    step_weight_bytes: float
    matmul_params: float
    device: object
    notes: list = field(default_factory=list)
    apply_s: float = 0.0
    compiled: object = None
    compiled_once: bool = False


def _release(device) -> None:
    """Drop compiled graphs and cached GPU memory between groups or after a failed config."""
    import gc

    import torch

    try:
        torch._dynamo.reset()
    except Exception:
        pass
    gc.collect()
    if _cuda(device):
        torch.cuda.empty_cache()


def _cuda(device) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


def _mem_alloc(device) -> int:
    import torch

    return torch.cuda.memory_allocated(device) if _cuda(device) else 0


def calib_batches_for(cfg, device, n: int = 4, seq: int = 256, seed: int = 0):
    """Random-token calibration batches (random weights have no meaningful text statistics)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.vocab_size, (1, seq), generator=g).to(device) for _ in range(n)]


def prepare_model(rc: RunConfig, device, *, catalog=None, config=None, calib=None) -> ModelContext:
    """Build the model of ``rc`` and apply its sparsity then its precision."""
    import torch

    from profiles import load

    from .build import build_model
    from .method_base import decoder_linears, harness_spec, notes_of
    from .precision import apply_precision
    from .sparsity import apply_sparsity, sparsity_spec

    if _cuda(device):
        torch.cuda.empty_cache()
    base = _mem_alloc(device)
    t0 = time.perf_counter()
    # built in the precision's own torch dtype (methods.yaml torch_dtype) where it has one, else bf16
    m = load().methods.get(rc.precision)
    dtype = getattr(torch, (m.get("torch_dtype") if m is not None else None) or "bfloat16")
    model, cfg, src = build_model(rc.model, weights=rc.weights, device=device, dtype=dtype, catalog=catalog,
                                  config=config)
    pspec = harness_spec(rc.precision)
    calib_prec = bool(pspec.get("calibration")) and src != "random"  # AWQ scales need real text
    needs_calib = bool(sparsity_spec(rc.sparsity).get("calibration")) or calib_prec
    cal = calib if calib is not None else (calib_batches_for(cfg, device) if needs_calib else None)
    notes = []
    if src == "random" and pspec.get("impl") == "awq":
        notes.append(f"{rc.precision} on random weights: no AWQ scale search (same int4 g128 kernels)")
    if src == "random" and cal is not None:
        notes.append("calibration: random tokens through random weights (masks/choices carry no quality meaning)")
    apply_sparsity(model, rc.sparsity, calib_batches=cal)
    apply_precision(model, rc.precision, calib_batches=cal if calib_prec else None)
    notes += notes_of(model)
    if _cuda(device):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        wbytes = _mem_alloc(device) - base
    else:
        wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    emb_bytes = emb.numel() * emb.element_size()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    step_bytes = wbytes - (0 if tied else emb_bytes)
    mm = 0
    for _, lin in decoder_linears(model):
        mm += lin.in_features * lin.out_features
    mm += model.config.vocab_size * model.config.hidden_size  # lm_head
    return ModelContext(model, model.config, src, float(wbytes), float(step_bytes), float(mm), device, notes,
                        apply_s=time.perf_counter() - t0)


def fuse_model(ctx: ModelContext) -> None:
    """Merge each decoder layer's q/k/v and gate/up weights (:func:`~measurement.decode_graph.fuse_projections`)
    once per built model, before any measurement: the originals become views of the merged tensors, so
    the weights' memory is unchanged; the transient copy is freed here, outside every measured window."""
    import torch

    from .decode_graph import fuse_projections
    from .method_base import decoder_layers

    n = 0
    with torch.inference_mode():
        for L in decoder_layers(ctx.model):
            try:
                f = fuse_projections(L)
            except AttributeError:   # not a Llama-shaped layer: the decoder will say unsupported
                return
            n += f[0] is not None or f[2] is not None
    if _cuda(ctx.device):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    if n:
        ctx.notes.append(f"regional-graph-fused: q|k|v and gate|up weights merged in {n} layers")
