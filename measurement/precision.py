"""Weight precisions: :func:`apply_precision` quantizes the ``nn.Linear`` layers inside the decoder blocks
of a transformers causal LM in place (fp16/bf16 cast the whole model; int8-wo and w8a8 through torchao;
fp8 W8A8 through torchao on compute capability >= 8.9; bnb-int8 / bnb-nf4 through bitsandbytes on CUDA;
awq-int4 in :mod:`measurement.awq`; gptq-int4 raises :class:`~measurement.method_base.Unsupported`).
Embeddings and ``lm_head`` stay in 16 bit.

Which implementation applies a method is data: its ``harness`` block in profiles/data/methods.yaml names an
entry of :data:`IMPLEMENTATIONS` (``impl``) and its parameters (the torchao ``config`` class, the bitsandbytes
``layer`` class); :data:`TORCHAO` and :data:`BNB` hold what this code knows about each of those classes.
"""
from __future__ import annotations

from profiles.dtypes import BF16, FP8, INT8

from .awq import _apply_awq_int4
from .method_base import (Unsupported, _cuda_cc, _device_of, _dtype_of, _filter_decoder_linear, _need_bnb,
                          _need_torchao, _note, _set_module, _torch, decoder_layers, decoder_linears, harness_spec,
                          harness_specs)

_SPECS = harness_specs("precision")
PRECISIONS = tuple(_SPECS)


def apply_precision(model, precision: str, *, calib_batches: list | None = None, simulate: bool = False,
                    awq_grid: int = 20, awq_max_rows: int = 4096):
    """Quantize ``model`` to ``precision`` in place (see module docstring); returns the model."""
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}' (one of {', '.join(PRECISIONS)})")
    dev = _device_of(model)
    spec = _SPECS[p]
    return IMPLEMENTATIONS[spec["impl"]](model, p, spec, dev=dev, calib_batches=calib_batches, simulate=simulate,
                                        awq_grid=awq_grid, awq_max_rows=awq_max_rows)


def _cast(model, p, spec, **_):
    """The whole model in the method's unquantized torch dtype (methods.yaml ``torch_dtype``)."""
    from profiles import load

    model.to(getattr(_torch(), load().methods[p].get("torch_dtype")))
    return model


def _unsupported(model, p, spec, **_):
    raise Unsupported(spec["reason"])


def _to16(model) -> None:
    """Quantizers start from 16-bit weights (bf16 unless the model already is fp16/bf16)."""
    torch = _torch()
    if _dtype_of(model) not in (torch.float16, torch.bfloat16):
        model.to(torch.bfloat16)


def _simulate_int8_wo(model) -> None:
    torch = _torch()
    for _, lin in decoder_linears(model):
        w = lin.weight.data.float()
        s = w.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127.0
        lin.weight.data = (torch.clamp(torch.round(w / s), -127, 127) * s).to(lin.weight.dtype)


# torchao quantize_ configs the harness applies, by class name: the note left on the model; ``matmul``: the measured
# matmul peak (measurement/roofline.py) that bounds its matmuls, whose kernel it calls (torch._int_mm for int8,
# torch._scaled_mm for fp8; absent: the 16-bit peak); ``granularity``: the torchao granularity class passed when
# this torchao has it; ``cuda``: runs on CUDA only, from the method's min_cc, named so in the reason;
# ``simulate``: the quantize-dequantize stand-in of ``simulate=True``; ``compiled_rows_over``: the compiled backend
# needs more rows (batch) than this, for the reason ``compiled_why`` (seen on H200).
TORCHAO = {
    "Int8WeightOnlyConfig": {"note": "fast only under torch.compile", "simulate": _simulate_int8_wo,
                             "simulated": "quantize-dequantize, per-channel symmetric int8"},
    "Int8DynamicActivationInt8WeightConfig": {
        "note": "dynamic per-token int8 activations", "matmul": INT8, "compiled_rows_over": 16,
        "compiled_why": "inductor lowers the int8 matmul to torch._int_mm, which needs more than 16 rows (seen on "
                        "H200: 'self.size(0) needs to be greater than 16, but got 1')"},
    "Float8DynamicActivationFloat8WeightConfig": {"note": "e4m3, per-row scales", "matmul": FP8,
                                                  "granularity": "PerRow", "cuda": "W8A8"},
}


def _torchao(model, p, spec, *, dev, simulate=False, **_):
    _to16(model)
    name = spec["config"]
    how = TORCHAO[name]
    if simulate and how.get("simulate"):
        how["simulate"](model)
        _note(model, f"{p} simulated ({how['simulated']})")
        return model
    if how.get("cuda"):
        from profiles import load

        m = load().methods[p]
        cc = _cuda_cc(dev)
        if cc is None or cc < m.min_cc_tuple:
            raise Unsupported(f"{p} {how['cuda']} needs CUDA compute capability >= {m.min_cc} (device: "
                              f"{'cc %d.%d' % cc if cc else dev.type})")
    _need_torchao()
    import torchao.quantization as tq

    cls = getattr(tq, name)
    cfg = None
    if how.get("granularity"):
        try:
            cfg = cls(granularity=getattr(tq, how["granularity"])())
        except Exception:  # pragma: no cover
            cfg = None
    tq.quantize_(model, cfg if cfg is not None else cls(), filter_fn=_filter_decoder_linear(model))
    _note(model, f"torchao {name} ({how['note']})")
    return model


def _linear8bit(bnb, torch, lin, w, dev, has_bias):
    new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=has_bias,
                              has_fp16_weights=False, threshold=6.0, device="meta")
    param = bnb.nn.Int8Params(w.to(torch.float16), requires_grad=False, has_fp16_weights=False)
    new.weight = param._quantize(dev)
    return new


def _linear4bit(bnb, torch, lin, w, dev, has_bias):
    new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=has_bias,
                            compute_dtype=w.dtype, compress_statistics=False, quant_type="nf4",
                            device="meta")
    param = bnb.nn.Params4bit(w, requires_grad=False, blocksize=64, compress_statistics=False,
                              quant_type="nf4", module=new)
    new.weight = param._quantize(dev)
    return new


# bitsandbytes layer classes the harness builds, by class name: (builder, what the note adds to the name)
BNB = {"Linear8bitLt": (_linear8bit, " (LLM.int8, threshold 6.0)"),
       "Linear4bit": (_linear4bit, " nf4 (blocksize 64, no double quant)")}


def _bitsandbytes(model, p, spec, *, dev, **_):
    _to16(model)
    _need_bnb(dev)
    _apply_bnb(model, spec["layer"])
    return model


def _apply_bnb(model, layer: str) -> None:
    torch = _torch()
    import bitsandbytes as bnb

    build, what = BNB[layer]
    for name, lin in decoder_linears(model):
        w = lin.weight.data
        has_bias = lin.bias is not None
        new = build(bnb, torch, lin, w, w.device, has_bias)
        if has_bias:
            new.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        _set_module(decoder_layers(model), name[len("layers."):], new)
        del lin
    _note(model, "bitsandbytes " + layer + what)


def _awq(model, p, spec, *, calib_batches=None, simulate=False, awq_grid=20, awq_max_rows=4096, **_):
    _to16(model)
    return _apply_awq_int4(model, calib_batches, simulate=simulate, grid=awq_grid, max_rows=awq_max_rows)


# methods.yaml ``harness.impl`` -> the function that applies it
IMPLEMENTATIONS = {"cast": _cast, "torchao": _torchao, "bitsandbytes": _bitsandbytes, "awq": _awq,
                   "unsupported": _unsupported}


def _torchao_entry(precision: str) -> dict:
    spec = harness_spec(precision)
    return TORCHAO.get(spec.get("config"), {}) if spec.get("impl") == "torchao" else {}


def matmul_peak(precision: str) -> str:
    """The measured matmul peak (a dtype of measurement/roofline.py's peaks) that bounds the harness's matmuls
    for ``precision``: the kernel its torchao config calls, else the 16-bit one."""
    return _torchao_entry(precision).get("matmul", BF16)


def compiled_check(precision: str, batch: int) -> str | None:
    """Why the compiled backend cannot run ``precision`` at ``batch`` rows (None: it can)."""
    how = _torchao_entry(precision)
    n = how.get("compiled_rows_over")
    if n is not None and batch <= n:
        return f"{precision} compiled: {how['compiled_why']}; eager rows measure {precision} at small batch"
    return None
