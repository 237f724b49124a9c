"""AWQ int4 (awq-int4): activation-aware per-input-channel scales searched on calibration inputs (grid over
alpha, as in the AWQ paper) and folded into the preceding RMSNorm / ``v_proj`` / ``up_proj``, then AWQ's
weight clipping, then int4 group-128 weight-only through torchao ``Int4WeightOnlyConfig(int4_packing_format=
"tile_packed_to_4d")`` on CUDA, or quantize-dequantize in 16 bit with ``simulate=True`` (quality only).
:func:`fake_quant_int4_g128` is that asymmetric int4 g128 grid (one scale and zero per 128 input columns).
"""
from __future__ import annotations

from .method_base import (Unsupported, _batches, _capture_inputs, _cuda_cc, _device_of, _dtype_of,
                          _filter_decoder_linear, _need_torchao, _note, _torch, decoder_layers, decoder_linears)


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
