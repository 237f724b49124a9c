"""Minimal GPTQ (Frantar et al., ICLR 2023) for the small-model quality campaign.

``measurement/precision.py`` raises ``Unsupported`` for gptq-int4 (no GPTQ solver or kernel in this stack),
so this is the minimal version the campaign needs for a *quality* figure: the GPTQ solver (Hessian
H = 2 X^T X / n from calibration inputs, 1% dampening, Cholesky of H^-1, column-by-column quantization
with error feedback, blocks of 128, no act-order), quantizing every decoder ``nn.Linear`` to int4
with one asymmetric scale/zero per group of 128 input columns (the same grid as awq.py's
``fake_quant_int4_g128`` / RTN), layer by layer, each layer calibrated on the outputs of the layers
already quantized. The quantized weights are written back dequantized in 16 bit: the numerics of
GPTQ int4 g128, not its kernels (rows say "simulated").
"""
from __future__ import annotations

import torch

from measurement.method_base import Unsupported, decoder_layers


def _qparams(w: torch.Tensor, bits: int = 4):
    """Per-row asymmetric params for a [out, g] group (as awq.fake_quant_int4_g128)."""
    levels = 2 ** bits - 1
    mx, mn = w.amax(-1, keepdim=True), w.amin(-1, keepdim=True)
    scale = (mx - mn).clamp(min=1e-8) / levels
    zero = torch.round(-mn / scale)
    return scale, zero, levels


def _quant(w, scale, zero, levels):
    q = torch.clamp(torch.round(w / scale) + zero, 0, levels)
    return (q - zero) * scale


@torch.no_grad()
def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor, *, group_size: int = 128, block: int = 128,
                         damp: float = 0.01, bits: int = 4) -> torch.Tensor:
    """GPTQ of one weight [out, in] given H [in, in]; returns the dequantized weight (float32)."""
    W = W.float().clone()
    H = H.float().clone()
    cols = W.shape[1]
    g = group_size if cols % group_size == 0 else cols
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True)
    Q = torch.zeros_like(W)
    scale = zero = levels = None
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:
                grp = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]  # current (error-updated) weights
                scale, zero, levels = _qparams(grp, bits)
            w = W1[:, i]
            d = Hinv1[i, i]
            q = _quant(w.unsqueeze(1), scale, zero, levels).squeeze(1)
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return Q


@torch.no_grad()
def apply_gptq_int4(model, calib_batches, *, group_size: int = 128, damp: float = 0.01):
    """Quantize-dequantize every decoder Linear with GPTQ int4 g128, layer by layer (in place)."""
    batches = [b["input_ids"] if isinstance(b, dict) else b for b in (calib_batches or [])]
    if not batches:
        raise Unsupported("gptq-int4 needs calibration batches")
    dev = next(model.parameters()).device
    layers = decoder_layers(model)
    n_tok = 0
    for li, layer in enumerate(layers):
        lins = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        Hs = {n: torch.zeros(m.in_features, m.in_features, device=dev, dtype=torch.float32) for n, m in lins.items()}
        counts = {n: 0 for n in lins}
        hooks = []
        for n, m in lins.items():
            def hook(mod, args, n=n):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                Hs[n] += 2 * x.t() @ x
                counts[n] += x.shape[0]
            hooks.append(m.register_forward_pre_hook(hook))
        try:
            for ids in batches:
                # run the model only as far as this layer: later layers are skipped by an exception
                _run_until(model, layer, ids.to(dev))
        finally:
            for h in hooks:
                h.remove()
        for n, m in lins.items():
            H = Hs[n] / max(1, counts[n])
            m.weight.data = gptq_quantize_weight(m.weight.data, H, group_size=group_size,
                                                 damp=damp).to(m.weight.dtype)
        n_tok = counts[next(iter(counts))]
    notes = getattr(model, "_advisor_notes", None)
    if notes is None:
        model._advisor_notes = notes = []
    notes.append(f"GPTQ int4 g{group_size} (minimal solver in measurement/quality/gptq.py: damp {damp}, "
                 f"block 128, no act-order, sequential layers, {n_tok} calibration tokens); simulated: "
                 "quantize-dequantize, weights kept in 16 bit (no GPTQ kernel in this stack)")
    return model


class _Stop(Exception):
    pass


def _run_until(model, layer, ids):
    def stop(mod, args, out):
        raise _Stop

    h = layer.register_forward_hook(stop)
    try:
        model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
