"""Apply a compression method to a transformers causal LM, for real.

Public interface (stable; ``measurement/quality`` imports it)::

    class Unsupported(Exception)                     # str(e) is the reason
    apply_precision(model, precision, *, calib_batches=None, simulate=False) -> model
    apply_sparsity(model, sparsity, *, calib_batches=None) -> model
    make_kv_cache(kv, config, *, budget=None, model=None, **kw) -> (cache_or_None, notes)

Every function works on the module in place where it can and returns the model (the same object).
Embeddings and ``lm_head`` always stay in 16 bit; precisions touch the ``nn.Linear`` layers inside
the decoder blocks only. ``calib_batches`` is a list of ``input_ids`` tensors (``[batch, seq]``) on
the model's device, or dicts with ``input_ids``.

What runs where:

* fp16, bf16: anywhere.
* int8-wo, w8a8: torchao; CPU too where torchao imports. fp8 (W8A8 e4m3): CUDA, compute capability >= 8.9.
* bnb-int8, bnb-nf4: bitsandbytes on CUDA (CPU raises :class:`Unsupported`).
* awq-int4: AWQ activation-aware per-input-channel scales (grid search over alpha, as in the AWQ paper),
  folded into the preceding RMSNorm / ``v_proj`` / ``up_proj``, then int4 group-128 weight-only through
  torchao ``Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d")`` on CUDA. Without
  ``calib_batches`` no scales are searched (same kernels; see ``model._advisor_notes``). On CPU the int4
  kernel does not run: :class:`Unsupported`, unless ``simulate=True``, which quantize-dequantizes the
  weights (asymmetric int4, group 128, the same numerics) and keeps them in 16 bit: quality only.
  ``simulate=True`` works the same way for int8-wo (per-channel symmetric int8).
* gptq-int4: :class:`Unsupported` (no GPTQ solver/kernel in this stack).
* 2:4 masks (magnitude, Wanda): the mask anywhere (dense storage on CPU), ``to_sparse_semi_structured``
  on CUDA in fp16/bf16 (pass ``semi_structured=False`` to keep dense masked weights).
* drop-N: ShortGPT Block Influence over ``calib_batches`` (else the last N layers before the final one).
* KV caches: all policies, CPU and CUDA (a real :class:`transformers.Cache` subclass).
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

PRECISIONS = ("fp16", "bf16", "fp8", "bnb-int8", "int8-wo", "w8a8", "bnb-nf4", "awq-int4", "gptq-int4")
SPARSITIES = ("dense", "2:4-magnitude", "2:4-wanda", "drop-N")
KV_POLICIES = ("kv-fp16", "kv-fp8", "kv-int8", "kv-int4", "kv-int2", "streamingllm", "snapkv", "pyramidkv")
KV_QUANT = {"kv-fp8": "fp8", "kv-int8": 8, "kv-int4": 4, "kv-int2": 2}
KV_EVICT = ("streamingllm", "snapkv", "pyramidkv")


class Unsupported(Exception):
    """The method cannot run here; ``str(e)`` is the reason."""


# --------------------------------------------------------------------------------------------- helpers
def _torch():
    import torch

    return torch


def _note(model, text: str) -> None:
    notes = getattr(model, "_advisor_notes", None)
    if notes is None:
        notes = []
        try:
            model._advisor_notes = notes
        except Exception:  # pragma: no cover
            return
    notes.append(text)


def notes_of(model) -> list[str]:
    """Notes the apply functions left on ``model`` (e.g. 'AWQ scales: none (no calibration)')."""
    return list(getattr(model, "_advisor_notes", []) or [])


def decoder_layers(model):
    """The ``nn.ModuleList`` of decoder blocks (Llama/Qwen2/Mistral layout: ``model.model.layers``)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise Unsupported(f"cannot find decoder layers in {type(model).__name__}")
    return layers


def decoder_linears(model) -> list[tuple[str, Any]]:
    """(qualified name, module) of every nn.Linear inside the decoder blocks (not embed/lm_head)."""
    torch = _torch()
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        for name, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear):
                out.append((f"layers.{i}.{name}", mod))
    return out


def _device_of(model):
    return next(model.parameters()).device


def _dtype_of(model):
    torch = _torch()
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _set_module(root, qualname: str, new) -> None:
    parent = root
    parts = qualname.split(".")
    for p in parts[:-1]:
        parent = getattr(parent, p) if not p.isdigit() else parent[int(p)]
    setattr(parent, parts[-1], new)


def _batches(calib_batches) -> list:
    out = []
    for b in calib_batches or []:
        out.append(b["input_ids"] if isinstance(b, dict) else b)
    return out


def _cuda_cc(device) -> tuple[int, int] | None:
    torch = _torch()
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def _need_torchao():
    try:
        import torchao  # noqa: F401
        from torchao.quantization import quantize_  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the install
        raise Unsupported(f"torchao is not importable here: {type(e).__name__}: {e}") from None
    import torchao

    return torchao


def _need_bnb(device):
    if device.type != "cuda":
        raise Unsupported("bitsandbytes int8/nf4 kernels need a CUDA device here (model is on "
                          f"{device.type})")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:
        raise Unsupported(f"bitsandbytes is not importable here: {type(e).__name__}: {e}") from None
    import bitsandbytes

    return bitsandbytes


def _filter_decoder_linear(model):
    """torchao filter_fn: nn.Linear modules inside the decoder blocks only."""
    torch = _torch()
    ids = {id(m) for _, m in decoder_linears(model)}

    def fn(module, fqn=""):
        return isinstance(module, torch.nn.Linear) and id(module) in ids

    return fn


# --------------------------------------------------------------------------------------------- precision
def apply_precision(model, precision: str, *, calib_batches: list | None = None, simulate: bool = False,
                    awq_grid: int = 20, awq_max_rows: int = 4096):
    """Quantize ``model`` to ``precision`` in place (see module docstring); returns the model."""
    torch = _torch()
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}' (one of {', '.join(PRECISIONS)})")
    dev = _device_of(model)
    if p in ("fp16", "bf16"):
        model.to(torch.float16 if p == "fp16" else torch.bfloat16)
        return model
    if p == "gptq-int4":
        raise Unsupported("GPTQ needs a GPTQ solver and Marlin/ExLlama kernels (gptqmodel), which this "
                          "stack does not ship; awq-int4 measures the same int4 g128 weight-only kernels")
    if _dtype_of(model) not in (torch.float16, torch.bfloat16):
        model.to(torch.bfloat16)
    if p == "int8-wo":
        if simulate:
            _simulate_int8_wo(model)
            _note(model, "int8-wo simulated (quantize-dequantize, per-channel symmetric int8)")
            return model
        _need_torchao()
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig(), filter_fn=_filter_decoder_linear(model))
        _note(model, "torchao Int8WeightOnlyConfig (fast only under torch.compile)")
        return model
    if p == "w8a8":
        _need_torchao()
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=_filter_decoder_linear(model))
        _note(model, "torchao Int8DynamicActivationInt8WeightConfig (dynamic per-token int8 activations)")
        return model
    if p == "fp8":
        cc = _cuda_cc(dev)
        if cc is None or cc < (8, 9):
            raise Unsupported(f"fp8 W8A8 needs CUDA compute capability >= 8.9 (device: "
                              f"{'cc %d.%d' % cc if cc else dev.type})")
        _need_torchao()
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
        try:
            from torchao.quantization import PerRow
            cfg = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        except Exception:  # pragma: no cover
            cfg = Float8DynamicActivationFloat8WeightConfig()
        quantize_(model, cfg, filter_fn=_filter_decoder_linear(model))
        _note(model, "torchao Float8DynamicActivationFloat8WeightConfig (e4m3, per-row scales)")
        return model
    if p in ("bnb-int8", "bnb-nf4"):
        _need_bnb(dev)
        _apply_bnb(model, p)
        return model
    if p == "awq-int4":
        return _apply_awq_int4(model, calib_batches, simulate=simulate, grid=awq_grid, max_rows=awq_max_rows)
    raise AssertionError(p)  # pragma: no cover


def _apply_bnb(model, p: str) -> None:
    torch = _torch()
    import bitsandbytes as bnb

    for name, lin in decoder_linears(model):
        w = lin.weight.data
        dev = w.device
        has_bias = lin.bias is not None
        if p == "bnb-int8":
            new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=has_bias,
                                      has_fp16_weights=False, threshold=6.0, device="meta")
            param = bnb.nn.Int8Params(w.to(torch.float16), requires_grad=False, has_fp16_weights=False)
            new.weight = param._quantize(dev)
        else:
            new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=has_bias,
                                    compute_dtype=w.dtype, compress_statistics=False, quant_type="nf4",
                                    device="meta")
            param = bnb.nn.Params4bit(w, requires_grad=False, blocksize=64, compress_statistics=False,
                                      quant_type="nf4", module=new)
            new.weight = param._quantize(dev)
        if has_bias:
            new.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        _set_module(decoder_layers(model), name[len("layers."):], new)
        del lin
    _note(model, "bitsandbytes " + ("Linear8bitLt (LLM.int8, threshold 6.0)" if p == "bnb-int8"
                                    else "Linear4bit nf4 (blocksize 64, no double quant)"))


def fake_quant_int4_g128(w, group_size: int = 128):
    """Asymmetric int4 (0..15) with one scale and zero per group of ``group_size`` input columns;
    returns the dequantized weight in ``w.dtype``."""
    torch = _torch()
    out_f, in_f = w.shape
    g = group_size if in_f % group_size == 0 else in_f
    x = w.float().reshape(out_f, in_f // g, g)
    mx, mn = x.amax(-1, keepdim=True), x.amin(-1, keepdim=True)
    scale = ((mx - mn).clamp(min=1e-8) / 15.0)
    zero = torch.round(-mn / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 15)
    return ((q - zero) * scale).reshape(out_f, in_f).to(w.dtype)


def _simulate_int8_wo(model) -> None:
    torch = _torch()
    for _, lin in decoder_linears(model):
        w = lin.weight.data.float()
        s = w.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127.0
        lin.weight.data = (torch.clamp(torch.round(w / s), -127, 127) * s).to(lin.weight.dtype)


def _capture_inputs(model, modules: dict, calib_batches, max_rows: int) -> dict:
    """Run the calibration batches, keep up to ``max_rows`` input rows (flattened tokens) per module."""
    torch = _torch()
    store: dict = {k: [] for k in modules}
    counts = {k: 0 for k in modules}
    hooks = []
    for key, mod in modules.items():
        def hook(m, args, key=key):
            if counts[key] >= max_rows:
                return
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            x = x[: max_rows - counts[key]]
            counts[key] += x.shape[0]
            store[key].append(x)
        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for ids in _batches(calib_batches):
                model(input_ids=ids.to(_device_of(model)), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) if v else None for k, v in store.items()}


def _fold_scale(prev, nxt, s) -> None:
    """AWQ scaling between two linears: divide ``prev``'s output rows by ``s``, multiply ``nxt``'s
    input columns by ``s`` (the product is unchanged in exact arithmetic)."""
    prev.weight.div_(s.to(prev.weight.dtype)[:, None])
    if prev.bias is not None:
        prev.bias.div_(s.to(prev.bias.dtype))
    nxt.weight.mul_(s.to(nxt.weight.dtype))


def _awq_search(x, linears: list, grid: int):
    """AWQ scale search for linears sharing input ``x`` [rows, in]. Returns (best scales [in], best alpha)."""
    torch = _torch()
    x = x.to(linears[0].weight.dtype)
    x_mean = x.abs().float().mean(0)
    with torch.no_grad():
        ref = [x @ lin.weight.t() for lin in linears]
        best = (float("inf"), None, None)
        for i in range(grid):
            alpha = i / grid
            s = x_mean.pow(alpha).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            err = 0.0
            for lin, r in zip(linears, ref):
                wq = fake_quant_int4_g128((lin.weight.float() * s).to(lin.weight.dtype)).float() / s
                out = x.float() @ wq.t()
                err += (out - r.float()).pow(2).mean().item()
            if err < best[0]:
                best = (err, s, alpha)
    return best[1], best[2]


def _awq_clip(x, lin, *, grid: int = 20, max_shrink: float = 0.5, n_rows: int = 256, chunk: int = 1024) -> float:
    """AWQ's weight clipping (llm-awq ``auto_clip``): per output row and group of 128 inputs, clamp the
    weights to ``+-max|w| x (1 - i / grid)`` for the ``i < max_shrink x grid`` that minimizes the group's
    output error on calibration inputs ``x`` [rows, in] after int4 g128 quantization. Returns the mean
    chosen ratio."""
    torch = _torch()
    w = lin.weight.data
    out_f, in_f = w.shape
    g = 128 if in_f % 128 == 0 else in_f
    xs = x[:n_rows].float().reshape(-1, in_f // g, g)                       # [n, groups, g]
    ratios = []
    for o0 in range(0, out_f, chunk):
        wg = w[o0:o0 + chunk].float().reshape(-1, in_f // g, g)              # [o, groups, g]
        ref = torch.einsum("ngk,ogk->nog", xs, wg)
        org_max = wg.abs().amax(-1, keepdim=True)
        best_err = torch.full(wg.shape[:2], float("inf"), device=w.device)
        best_max = org_max.clone()
        for i in range(max(1, int(max_shrink * grid))):
            mx = org_max * (1 - i / grid)
            q = fake_quant_int4_g128(wg.clamp(-mx, mx).reshape(-1, in_f), g).reshape(wg.shape)
            err = (torch.einsum("ngk,ogk->nog", xs, q) - ref).pow(2).mean(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better[..., None], mx, best_max)
        w[o0:o0 + chunk] = wg.clamp(-best_max, best_max).reshape(-1, in_f).to(w.dtype)
        ratios.append((best_max / org_max.clamp(min=1e-12)).mean().item())
    return sum(ratios) / len(ratios)


def _apply_awq_scales(model, calib_batches, grid: int, max_rows: int, clip: bool = True) -> list[float]:
    """Search and fold AWQ scales (function-preserving), then clip the weights (``clip``), for every
    decoder layer. Returns the chosen alphas."""
    torch = _torch()
    layers = decoder_layers(model)
    mods = {}
    for i, L in enumerate(layers):
        a, m = L.self_attn, L.mlp
        mods[(i, "qkv")] = a.q_proj
        mods[(i, "o")] = a.o_proj
        mods[(i, "gu")] = m.gate_proj
        mods[(i, "down")] = m.down_proj
    acts = _capture_inputs(model, mods, calib_batches, max_rows)
    alphas = []
    with torch.no_grad():
        for i, L in enumerate(layers):
            a, m = L.self_attn, L.mlp
            # q,k,v <- input_layernorm
            x_qkv = acts[(i, "qkv")]
            s_qkv, al = _awq_search(x_qkv, [a.q_proj, a.k_proj, a.v_proj], grid)
            L.input_layernorm.weight.div_(s_qkv.to(L.input_layernorm.weight.dtype))
            for lin in (a.q_proj, a.k_proj, a.v_proj):
                lin.weight.mul_(s_qkv.to(lin.weight.dtype))
            alphas.append(al)
            # gate, up <- post_attention_layernorm
            x_gu = acts[(i, "gu")]
            s_gu, al = _awq_search(x_gu, [m.gate_proj, m.up_proj], grid)
            L.post_attention_layernorm.weight.div_(s_gu.to(L.post_attention_layernorm.weight.dtype))
            for lin in (m.gate_proj, m.up_proj):
                lin.weight.mul_(s_gu.to(lin.weight.dtype))
            alphas.append(al)
            # down <- up (act(gate) * up is linear in up's output rows)
            x_down = acts[(i, "down")]
            s_down, al = _awq_search(x_down, [m.down_proj], grid)
            _fold_scale(m.up_proj, m.down_proj, s_down)
            alphas.append(al)
            # o <- v, only where v and o have matching shapes (no GQA), as in llm-awq
            x_o, s_o = acts[(i, "o")], None
            if a.v_proj.weight.shape[0] == a.o_proj.weight.shape[1]:
                s_o, al = _awq_search(x_o, [a.o_proj], grid)
                _fold_scale(a.v_proj, a.o_proj, s_o)
                alphas.append(al)
            # clipping on the scaled inputs; q and k are not clipped (their error passes through the
            # q.k product, which a per-linear loss does not see), as in llm-awq
            for x, s, lins in ((x_qkv, s_qkv, [a.v_proj]), (x_gu, s_gu, [m.gate_proj, m.up_proj]),
                               (x_down, s_down, [m.down_proj]), (x_o, s_o, [a.o_proj])) if clip else ():
                xs = x.float() / s.float() if s is not None else x.float()
                for lin in lins:
                    _awq_clip(xs, lin)
    return alphas


def _apply_awq_int4(model, calib_batches, *, simulate: bool, grid: int, max_rows: int):
    torch = _torch()
    dev = _device_of(model)
    if not simulate:
        if dev.type != "cuda":
            raise Unsupported("torchao int4 weight-only (tile_packed_to_4d) needs CUDA; on CPU pass "
                              "simulate=True for a quantize-dequantize quality simulation")
        if _cuda_cc(dev) < (8, 0):
            raise Unsupported("torchao int4 tile_packed_to_4d needs compute capability >= 8.0")
        _need_torchao()
    if _batches(calib_batches):
        alphas = _apply_awq_scales(model, calib_batches, grid, max_rows)
        _note(model, f"AWQ scales and weight clipping searched on {len(_batches(calib_batches))} calibration "
                     f"batches (grid {grid}, mean alpha {sum(alphas) / max(1, len(alphas)):.2f})")
    else:
        _note(model, "AWQ scales: none (no calibration data; same int4 g128 kernels)")
    if simulate:
        with torch.no_grad():
            for _, lin in decoder_linears(model):
                lin.weight.data = fake_quant_int4_g128(lin.weight.data)
        _note(model, "int4 g128 simulated (quantize-dequantize, asymmetric, weights kept in 16 bit)")
        return model
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    if _dtype_of(model) != torch.bfloat16:
        model.to(torch.bfloat16)
    quantize_(model, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"),
              filter_fn=_filter_decoder_linear(model))
    _note(model, "torchao Int4WeightOnlyConfig(group_size=128, tile_packed_to_4d)")
    return model


# --------------------------------------------------------------------------------------------- sparsity
_DROP = re.compile(r"^drop-(\d+)$")


def apply_sparsity(model, sparsity: str, *, calib_batches: list | None = None, semi_structured: bool | None = None,
                   max_rows: int = 4096):
    """Prune ``model`` in place; returns it. ``sparsity``: dense, 2:4-magnitude, 2:4-wanda, drop-N."""
    torch = _torch()
    s = str(sparsity).lower()
    if s == "dense":
        return model
    m = _DROP.match(s)
    if m:
        return _drop_layers(model, int(m.group(1)), calib_batches)
    if s not in ("2:4-magnitude", "2:4-wanda"):
        if s.startswith("2:4-"):
            raise Unsupported(f"{sparsity}: no solver for this mask in this stack (2:4-magnitude and "
                              "2:4-wanda run the same semi-structured kernels)")
        raise ValueError(f"unknown sparsity '{sparsity}' (dense, 2:4-magnitude, 2:4-wanda, drop-N)")
    dev = _device_of(model)
    norms = None
    if s == "2:4-wanda":
        if not _batches(calib_batches):
            raise Unsupported("2:4-wanda needs calibration batches (|W| x ||X||)")
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


# --------------------------------------------------------------------------------------------- KV caches
def _kv_layer_classes():
    """Build the cache layer classes lazily (transformers is imported only here)."""
    torch = _torch()
    from transformers.cache_utils import DynamicLayer

    class QuantKVLayer(DynamicLayer):
        """K/V quantized on write in groups of ``group`` along head_dim (scale + zero per group), a residual
        of the most recent ``residual`` tokens kept in 16 bit, everything dequantized on read.
        ``nbits`` in (8, 4, 2): asymmetric integer codes packed into uint8; ``"fp8"``: e4m3 with one
        scale per group."""

        is_compileable = False

        def __init__(self, nbits, group: int = 64, residual: int = 128, **kw):
            super().__init__()
            self.nbits, self.group, self.residual = nbits, group, residual
            self.q = {"k": None, "v": None}  # (codes, scale, zero, n_tokens)
            self.n_quant = 0
            self.cumulative_length = 0

        # packing ---------------------------------------------------------------------------
        def _quant(self, x):
            B, H, T, D = x.shape
            g = self.group if D % self.group == 0 else D
            xf = x.float().reshape(B, H, T, D // g, g)
            if self.nbits == "fp8":
                scale = (xf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1e-8)
                codes = (xf / scale).to(torch.float8_e4m3fn)
                return codes, scale.to(torch.float16), None
            levels = 2 ** self.nbits - 1
            mn, mx = xf.amin(-1, keepdim=True), xf.amax(-1, keepdim=True)
            scale = ((mx - mn) / levels).clamp(min=1e-8)
            q = torch.clamp(torch.round((xf - mn) / scale), 0, levels).to(torch.uint8)
            per = 8 // self.nbits
            if per > 1:
                q = q.reshape(*q.shape[:-1], g // per, per)
                shifts = torch.arange(per, device=q.device, dtype=torch.uint8) * self.nbits
                q = (q << shifts).sum(-1, dtype=torch.uint8)
            return q, scale.to(torch.float16), mn.to(torch.float16)

        def _dequant(self, packed, dtype):
            codes, scale, zero = packed
            if self.nbits == "fp8":
                x = codes.float() * scale.float()
            else:
                per = 8 // self.nbits
                if per > 1:
                    shifts = torch.arange(per, device=codes.device, dtype=torch.uint8) * self.nbits
                    mask = (1 << self.nbits) - 1
                    codes = ((codes.unsqueeze(-1) >> shifts) & mask).reshape(*codes.shape[:-1], -1)
                x = codes.float() * scale.float() + zero.float()
            B, H, T = x.shape[:3]
            return x.reshape(B, H, T, -1).to(dtype)

        def _append_quant(self, which, x):
            new = self._quant(x)
            old = self.q[which]
            if old is None:
                self.q[which] = new
            else:
                self.q[which] = tuple(torch.cat([a, b], dim=2) if a is not None else None
                                      for a, b in zip(old, new))

        # Cache API ------------------------------------------------------------------------
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.cumulative_length += key_states.shape[-2]
            deq_k = self._dequant(self.q["k"], key_states.dtype) if self.q["k"] is not None else None
            deq_v = self._dequant(self.q["v"], value_states.dtype) if self.q["v"] is not None else None
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            k_all = self.keys if deq_k is None else torch.cat([deq_k, self.keys], dim=-2)
            v_all = self.values if deq_v is None else torch.cat([deq_v, self.values], dim=-2)
            # flush all but the last `residual` tokens of the 16-bit residual into the quantized store
            r = self.keys.shape[-2]
            if r > self.residual:
                n = r - self.residual
                self._append_quant("k", self.keys[..., :n, :])
                self._append_quant("v", self.values[..., :n, :])
                self.keys = self.keys[..., n:, :].contiguous()
                self.values = self.values[..., n:, :].contiguous()
                self.n_quant += n
            return k_all, v_all

        def get_seq_length(self) -> int:
            return self.cumulative_length

        def get_mask_sizes(self, query_length, *a, **k):
            q = query_length if isinstance(query_length, int) else query_length.shape[0]
            return self.cumulative_length + q, 0

        def reset(self):
            super().reset()
            self.q = {"k": None, "v": None}
            self.n_quant = 0
            self.cumulative_length = 0

        def nbytes(self) -> int:
            n = 0
            for t in (self.keys, self.values):
                if t is not None:
                    n += t.numel() * t.element_size()
            for packed in self.q.values():
                if packed is not None:
                    n += sum(t.numel() * t.element_size() for t in packed if t is not None)
            return n

    class EvictKVLayer(DynamicLayer):
        """16-bit KV kept to a token budget. ``policy``: streamingllm (``sinks`` first tokens + recent window,
        enforced on every write) or snapkv/pyramidkv (after prefill keep the prompt tokens most attended
        by the last ``window`` prompt queries, max-pooled over ``pool`` neighbours, per KV head, then
        append decoded tokens). Prefill attends to the whole prompt; eviction applies to what is stored."""

        is_compileable = False

        def __init__(self, policy, budget, *, sinks=4, window=32, pool=7, **kw):
            super().__init__()
            self.policy, self.budget = policy, int(budget)
            self.sinks, self.window, self.pool = sinks, window, pool
            self.cumulative_length = 0
            self.pending_queries = None  # [B, Hq, w, D] set by the attention pre-hook (post-rope)
            self.used_query_proxy = False

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            first = self.cumulative_length == 0
            self.cumulative_length += key_states.shape[-2]
            k_all = torch.cat([self.keys, key_states], dim=-2)
            v_all = torch.cat([self.values, value_states], dim=-2)
            L = k_all.shape[-2]
            if self.policy == "streamingllm":
                if L > self.budget:
                    keep_recent = self.budget - self.sinks
                    self.keys = torch.cat([k_all[..., : self.sinks, :], k_all[..., L - keep_recent:, :]], dim=-2)
                    self.values = torch.cat([v_all[..., : self.sinks, :], v_all[..., L - keep_recent:, :]], dim=-2)
                else:
                    self.keys, self.values = k_all, v_all
            elif first and L > self.budget:
                self.keys, self.values = self._snap(k_all, v_all)
            else:
                self.keys, self.values = k_all, v_all
            self.pending_queries = None
            return k_all, v_all

        def _snap(self, k, v):
            B, Hkv, L, D = k.shape
            w = min(self.window, L, self.budget)
            q = self.pending_queries
            if q is None:  # no attached model: the observation window's own keys stand in for queries
                self.used_query_proxy = True
                q = k[..., L - w:, :]
            q = q[..., -w:, :].float()
            Hq = q.shape[1]
            rep = Hq // Hkv
            kk = k.float().repeat_interleave(rep, dim=1) if rep > 1 else k.float()
            att = (q @ kk.transpose(-1, -2)) / math.sqrt(D)  # [B, Hq, w, L]
            # causal inside the window
            qpos = torch.arange(L - w, L, device=k.device)[:, None]
            kpos = torch.arange(L, device=k.device)[None, :]
            att = att.masked_fill(kpos > qpos, float("-inf")).softmax(-1)
            score = att[..., : L - w].sum(-2)  # [B, Hq, L-w]
            score = score.reshape(B, Hkv, rep, L - w).mean(2)
            if self.pool > 1:
                score = torch.nn.functional.max_pool1d(score.reshape(B * Hkv, 1, L - w), self.pool, stride=1,
                                                       padding=self.pool // 2).reshape(B, Hkv, -1)[..., : L - w]
            n_keep = max(0, self.budget - w)
            idx = score.topk(n_keep, dim=-1).indices.sort(-1).values  # [B, Hkv, n_keep]
            gi = idx.unsqueeze(-1).expand(-1, -1, -1, D)
            k_keep = torch.cat([k.gather(2, gi), k[..., L - w:, :]], dim=-2)
            v_keep = torch.cat([v.gather(2, gi), v[..., L - w:, :]], dim=-2)
            return k_keep.contiguous(), v_keep.contiguous()

        def get_seq_length(self) -> int:
            return self.cumulative_length

        def get_mask_sizes(self, query_length, *a, **k):
            q = query_length if isinstance(query_length, int) else query_length.shape[0]
            stored = self.keys.shape[-2] if self.is_initialized and self.keys is not None and self.keys.dim() == 4 else 0
            return stored + q, 0

        def reset(self):
            super().reset()
            self.cumulative_length = 0
            self.pending_queries = None

        def nbytes(self) -> int:
            return sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)

    return QuantKVLayer, EvictKVLayer


_KV_CACHE_CLS = None


def _kv_cache_class():
    global _KV_CACHE_CLS
    if _KV_CACHE_CLS is not None:
        return _KV_CACHE_CLS
    from transformers.cache_utils import Cache

    class AdvisorKVCache(Cache):
        """A transformers Cache whose layers quantize or evict. ``get_seq_length`` counts every token
        seen (so positions stay right after eviction); ``stored_tokens`` counts what is kept."""

        is_compileable = False

        def __init__(self, layers, kv: str, notes: str):
            super().__init__(layers=layers)
            self.kv, self.notes = kv, notes
            self._hooks = []

        def nbytes(self) -> int:
            return sum(L.nbytes() for L in self.layers)

        def stored_tokens(self) -> list[int]:
            return [(L.keys.shape[-2] if L.keys is not None and L.keys.dim() == 4 else 0)
                    + getattr(L, "n_quant", 0) for L in self.layers]

        def attach(self, model):
            """Install pre-hooks on each attention module that hand the last ``window`` post-rope queries
            of a prefill to the layer (SnapKV / PyramidKV scores). Idempotent; ``detach()`` removes them."""
            self.detach()
            for i, L in enumerate(decoder_layers(model)):
                attn = L.self_attn
                layer = self.layers[i]
                if not hasattr(layer, "pending_queries"):
                    continue
                self._hooks.append(attn.register_forward_pre_hook(_query_hook(layer), with_kwargs=True))
            return self

        def detach(self):
            for h in self._hooks:
                h.remove()
            self._hooks = []

    _KV_CACHE_CLS = AdvisorKVCache
    return AdvisorKVCache


def _query_hook(layer):
    torch = _torch()

    def hook(module, args, kwargs):
        hs = kwargs.get("hidden_states", args[0] if args else None)
        if hs is None or hs.shape[1] <= 1 or layer.cumulative_length != 0:
            return None
        pe = kwargs.get("position_embeddings")
        w = min(layer.window, hs.shape[1])
        x = hs[:, -w:, :]
        hd = getattr(module, "head_dim", None) or module.q_proj.weight.shape[0] // module.config.num_attention_heads
        with torch.no_grad():
            q = module.q_proj(x).view(x.shape[0], w, -1, hd)
            if hasattr(module, "q_norm"):
                q = module.q_norm(q)
            q = q.transpose(1, 2)
            if pe is not None:
                cos, sin = pe
                cos, sin = cos[:, -w:].unsqueeze(1), sin[:, -w:].unsqueeze(1)
                half = q.shape[-1] // 2
                rot = torch.cat([-q[..., half:], q[..., :half]], dim=-1)
                q = q * cos + rot * sin
        layer.pending_queries = q
        return None

    return hook


def pyramid_budgets(budget: int, n_layers: int, *, beta: float = 0.5, min_budget: int = 8) -> list[int]:
    """Per-layer budgets decreasing linearly from (1+beta)*budget to (1-beta)*budget; mean = budget."""
    if n_layers == 1:
        return [budget]
    out = [max(min_budget, round(budget * (1 + beta - 2 * beta * i / (n_layers - 1)))) for i in range(n_layers)]
    # fix rounding so the mean is exactly the budget where possible
    diff = budget * n_layers - sum(out)
    i = 0
    while diff != 0 and i < 10 * n_layers:
        j = i % n_layers
        step = 1 if diff > 0 else -1
        if out[j] + step >= min_budget:
            out[j] += step
            diff -= step
        i += 1
    return out


def make_kv_cache(kv: str, config, *, budget: int | None = None, model=None, residual: int = 128,
                  group: int = 64, window: int = 32, sinks: int = 4, **kw):
    """A cache object for ``kv`` and ``config`` (the model's config), and a notes string.

    * kv-fp16: ``(None, ...)``: use the model's default cache (DynamicCache eager; StaticCache compiled).
    * kv-fp8 / kv-int8 / kv-int4 / kv-int2: quantize on write (groups of ``group`` along head_dim,
      scale + zero; fp8 e4m3 with a scale), keep the last ``residual`` tokens in 16 bit, dequantize on read.
    * streamingllm: ``sinks`` first tokens + recent window, ``budget`` tokens in all.
    * snapkv: after prefill keep the ``budget`` prompt tokens most attended by the last ``window`` prompt
      queries (pooled, per KV head); decoded tokens are appended. Pass ``model=`` (or call
      ``cache.attach(model)``) so the real queries are used; without it the window's keys stand in.
    * pyramidkv: snapkv with per-layer budgets decreasing linearly (mean = ``budget``).
    """
    k = str(kv).lower()
    if k not in KV_POLICIES:
        raise ValueError(f"unknown kv policy '{kv}' (one of {', '.join(KV_POLICIES)})")
    if k == "kv-fp16":
        return None, "16-bit KV (model default cache)"
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = int(cfg.num_hidden_layers)
    QuantKVLayer, EvictKVLayer = _kv_layer_classes()
    Cls = _kv_cache_class()
    if k in KV_QUANT:
        nbits = KV_QUANT[k]
        layers = [QuantKVLayer(nbits, group=group, residual=residual) for _ in range(n)]
        notes = (f"{k}: {'fp8 e4m3 + fp16 scale' if nbits == 'fp8' else f'int{nbits} asymmetric'} per group of "
                 f"{group} along head_dim, last {residual} tokens in 16 bit, dequantized on read")
        return Cls(layers, k, notes), notes
    if budget is None or int(budget) <= 0:
        raise ValueError(f"{k} needs a positive budget (tokens)")
    budget = int(budget)
    if k == "streamingllm":
        if budget <= sinks:
            raise ValueError(f"streamingllm budget must exceed the {sinks} sink tokens")
        layers = [EvictKVLayer("streamingllm", budget, sinks=sinks) for _ in range(n)]
        notes = f"streamingllm: {sinks} sink tokens + recent window, {budget} tokens"
    elif k == "snapkv":
        layers = [EvictKVLayer("snapkv", budget, window=window) for _ in range(n)]
        notes = f"snapkv: prompt KV selected by the last {window} queries (max-pool 7), {budget} tokens per layer"
    else:
        bl = pyramid_budgets(budget, n)
        layers = [EvictKVLayer("pyramidkv", b, window=window) for b in bl]
        notes = f"pyramidkv: per-layer budgets {bl[0]}..{bl[-1]} (mean {budget}), snapkv selection"
    cache = Cls(layers, k, notes)
    if model is not None:
        cache.attach(model)
    elif k != "streamingllm":
        notes += "; no model attached: window keys stand in for queries"
    return cache, notes
