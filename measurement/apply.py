"""Apply a compression method to a transformers causal LM, for real: the methods' public interface,
re-exported from the modules that hold them (:mod:`measurement.precision`, :mod:`measurement.awq`,
:mod:`measurement.sparsity`, :mod:`measurement.kv_cache`, and :mod:`measurement.method_base` for what
they share)::

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

from .awq import fake_quant_int4_g128
from .kv_cache import KV_EVICT, KV_POLICIES, KV_QUANT, make_kv_cache, pyramid_budgets
from .method_base import Unsupported, decoder_layers, decoder_linears, notes_of
from .precision import PRECISIONS, apply_precision
from .sparsity import SPARSITIES, apply_sparsity, block_influence, mask_2_4, remove_layers

__all__ = ["KV_EVICT", "KV_POLICIES", "KV_QUANT", "PRECISIONS", "SPARSITIES", "Unsupported", "apply_precision",
           "apply_sparsity", "block_influence", "decoder_layers", "decoder_linears", "fake_quant_int4_g128",
           "make_kv_cache", "mask_2_4", "notes_of", "pyramid_budgets", "remove_layers"]
