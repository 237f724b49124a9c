"""Weight precisions: :func:`apply_precision` quantizes the ``nn.Linear`` layers inside the decoder blocks
of a transformers causal LM in place (fp16/bf16 cast the whole model; int8-wo and w8a8 through torchao;
fp8 W8A8 through torchao on compute capability >= 8.9; bnb-int8 / bnb-nf4 through bitsandbytes on CUDA;
awq-int4 in :mod:`measurement.awq`; gptq-int4 raises :class:`~measurement.method_base.Unsupported`).
Embeddings and ``lm_head`` stay in 16 bit.
"""
from __future__ import annotations

from .awq import _apply_awq_int4
from .method_base import (Unsupported, _cuda_cc, _device_of, _dtype_of, _filter_decoder_linear, _need_bnb,
                          _need_torchao, _note, _set_module, _torch, decoder_layers, decoder_linears)

PRECISIONS = ("fp16", "bf16", "fp8", "bnb-int8", "int8-wo", "w8a8", "bnb-nf4", "awq-int4", "gptq-int4")


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


def _simulate_int8_wo(model) -> None:
    torch = _torch()
    for _, lin in decoder_linears(model):
        w = lin.weight.data.float()
        s = w.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127.0
        lin.weight.data = (torch.clamp(torch.round(w / s), -127, 127) * s).to(lin.weight.dtype)
