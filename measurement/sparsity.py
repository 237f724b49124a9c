"""Sparsity: :func:`apply_sparsity` prunes a transformers causal LM in place: 2:4 masks on every decoder
``nn.Linear`` (magnitude, or Wanda's ``|W| x ||X||`` over calibration inputs), stored through
``to_sparse_semi_structured`` on CUDA in fp16/bf16 or as dense masked weights; drop-N removes N decoder
layers chosen by ShortGPT Block Influence over calibration batches (else the last N before the final one).

Which implementation prunes is data: a sparsity's ``harness`` block in profiles/data/methods.yaml names an
entry of :data:`IMPLEMENTATIONS` (``impl``) and its parameters (``score`` of a 2:4 mask).
"""
from __future__ import annotations

import re
from typing import Iterable

from .method_base import (Unsupported, _batches, _capture_inputs, _cuda_cc, _device_of, _dtype_of, _note, _torch,
                          decoder_layers, decoder_linears, harness_specs)

_DROP = re.compile(r"^drop-(\d+)$")
_SPECS = harness_specs("sparsity")
_DROPPER = next(i for i, h in _SPECS.items() if h["impl"] == "drop_layers")  # named drop-N, never by its id
SPARSITIES = tuple("drop-N" if i == _DROPPER else i for i in _SPECS)


def sparsity_spec(sparsity: str) -> dict:
    """The ``harness`` block that prunes ``sparsity`` (drop-N: the layer-dropping method's); {} if none."""
    if _DROP.match(sparsity):
        return _SPECS[_DROPPER]
    return _SPECS.get(sparsity, {}) if sparsity != _DROPPER else {}


def drops_layers(method: str) -> bool:
    """Whether catalog method ``method`` is the layer-dropping one (named drop-N in a run)."""
    return method == _DROPPER


def apply_sparsity(model, sparsity: str, *, calib_batches: list | None = None, semi_structured: bool | None = None,
                   max_rows: int = 4096):
    """Prune ``model`` in place; returns it. ``sparsity``: dense, 2:4-magnitude, 2:4-wanda, drop-N."""
    s = str(sparsity).lower()
    spec = sparsity_spec(s)
    if not spec:
        if s.startswith("2:4-"):
            raise Unsupported(f"{sparsity}: no solver for this mask in this stack (2:4-magnitude and "
                              "2:4-wanda run the same semi-structured kernels)")
        raise ValueError(f"unknown sparsity '{sparsity}' ({', '.join(SPARSITIES)})")
    return IMPLEMENTATIONS[spec["impl"]](model, s, spec, calib_batches=calib_batches, semi_structured=semi_structured,
                                        max_rows=max_rows)


def _identity(model, s, spec, **_):
    return model


def _drop(model, s, spec, *, calib_batches=None, **_):
    return _drop_layers(model, int(_DROP.match(s).group(1)), calib_batches)


def _mask(model, s, spec, *, calib_batches=None, semi_structured=None, max_rows=4096):
    """A 2:4 mask by ``spec['score']``: magnitude |W|, or wanda |W| x ||X|| (needs calibration batches)."""
    torch = _torch()
    dev = _device_of(model)
    norms = None
    if spec["score"] == "wanda":
        if not _batches(calib_batches):
            raise Unsupported(f"{s} needs calibration batches (|W| x ||X||)")
        mods = {name: lin for name, lin in decoder_linears(model)}
        acts = _capture_inputs(model, mods, calib_batches, max_rows)
        norms = {k: v.float().pow(2).sum(0).sqrt() for k, v in acts.items() if v is not None}
    use_sparse = semi_structured
    if use_sparse is None:
        use_sparse = dev.type == "cuda"
    if use_sparse:
        cc = _cuda_cc(dev)
        if cc is None or cc < (8, 0):
            raise Unsupported("2:4 semi-structured kernels need CUDA compute capability >= 8.0")
        if _dtype_of(model) not in (torch.float16, torch.bfloat16):
            raise Unsupported("2:4 semi-structured kernels need fp16/bf16 weights")
    with torch.no_grad():
        for name, lin in decoder_linears(model):
            w = lin.weight.data
            score = w.abs().float()
            if norms is not None:
                score = score * norms[name][None, :].to(score.device)
            mask = mask_2_4(score)
            w.mul_(mask.to(w.dtype))
            if use_sparse:
                from torch.sparse import to_sparse_semi_structured

                lin.weight = torch.nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
    _note(model, f"{s} mask on every decoder Linear; " + (
        "torch to_sparse_semi_structured (cuSPARSELt/CUTLASS)" if use_sparse else "dense storage of masked weights"))
    return model


# methods.yaml ``harness.impl`` -> the function that applies it
IMPLEMENTATIONS = {"identity": _identity, "mask_2_4": _mask, "drop_layers": _drop}


def mask_2_4(score):
    """Keep the 2 largest of each 4 consecutive input weights per output row (bool mask)."""
    torch = _torch()
    o, i = score.shape
    if i % 4:
        raise Unsupported(f"2:4 needs in_features divisible by 4 (got {i})")
    g = score.reshape(o, i // 4, 4)
    idx = g.topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(o, i)


def block_influence(model, calib_batches) -> list[float]:
    """ShortGPT Block Influence per layer: 1 - mean cosine(hidden in, hidden out) over calibration tokens."""
    torch = _torch()
    n = len(decoder_layers(model))
    tot = [0.0] * n
    cnt = 0
    with torch.no_grad():
        for ids in _batches(calib_batches):
            out = model(input_ids=ids.to(_device_of(model)), output_hidden_states=True, use_cache=False)
            hs = out.hidden_states  # n+1 tensors; the last has the final norm applied in HF models
            # The input of layer i is hs[i]; its output is hs[i+1] except for the last layer (normed):
            for i in range(n):
                a = hs[i].float().reshape(-1, hs[i].shape[-1])
                b = hs[i + 1].float().reshape(-1, hs[i].shape[-1])
                tot[i] += (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).sum().item()
            cnt += hs[0].shape[0] * hs[0].shape[1]
    return [t / max(1, cnt) for t in tot]


def _drop_layers(model, n_drop: int, calib_batches):
    layers = decoder_layers(model)
    n = len(layers)
    if n_drop <= 0:
        return model
    if n_drop >= n:
        raise Unsupported(f"drop-{n_drop}: the model has only {n} layers")
    if _batches(calib_batches):
        bi = block_influence(model, calib_batches)
        cand = sorted(range(n - 1), key=lambda i: bi[i])  # never drop the final layer (its output is normed)
        drop = sorted(cand[:n_drop])
        _note(model, f"drop-{n_drop}: ShortGPT Block Influence removed layers {drop}")
    else:
        drop = list(range(n - 1 - n_drop, n - 1))
        _note(model, f"drop-{n_drop}: no calibration data; removed the last {n_drop} layers before the final one {drop}")
    remove_layers(model, drop)
    return model


def remove_layers(model, drop: Iterable[int]) -> None:
    """Remove decoder layers by index; renumber attention layer_idx and fix the config."""
    torch = _torch()
    import copy

    drop = set(drop)
    layers = decoder_layers(model)
    cfg = copy.deepcopy(model.config)  # the config object may be shared with other models
    model.config = cfg
    if getattr(model, "model", None) is not None and hasattr(model.model, "config"):
        model.model.config = cfg
    keep = [L for i, L in enumerate(layers) if i not in drop]
    new = torch.nn.ModuleList(keep)
    inner = getattr(model, "model", model)
    inner.layers = new
    for j, L in enumerate(new):
        for mod in L.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = j
    lt = getattr(cfg, "layer_types", None)
    if isinstance(lt, (list, tuple)) and len(lt) == len(layers):
        cfg.layer_types = [t for i, t in enumerate(lt) if i not in drop]
    cfg.num_hidden_layers = len(new)
