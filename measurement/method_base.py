"""What every compression method shares (:mod:`measurement.apply` re-exports the public names): the
:class:`Unsupported` exception (``str(e)`` is the reason), the notes the methods leave on a model
(:func:`notes_of`), where a model's decoder blocks and their ``nn.Linear`` layers are
(:func:`decoder_layers`, :func:`decoder_linears`), the model's device, dtype and CUDA compute capability,
the optional imports (torchao, bitsandbytes) that raise :class:`Unsupported` when missing, the
capture of calibration inputs per module (up to ``max_rows`` flattened tokens each), and each method's
``harness`` block of the catalog (:func:`harness_specs`, :func:`harness_spec`).
"""
from __future__ import annotations

from typing import Any


class Unsupported(Exception):
    """The method cannot run here; ``str(e)`` is the reason."""


def harness_specs(kind: str) -> dict[str, dict]:
    """{method id: its ``harness`` block} for the catalog methods of ``kind`` (precision|sparsity|kv) that the
    harness runs, in catalog order (profiles/data/methods.yaml ``harness``: ``impl`` names the registry entry
    of :mod:`measurement.precision`, :mod:`measurement.sparsity` or :mod:`measurement.kv_cache` that applies
    it, the other keys are its parameters)."""
    from profiles import load

    return {m.id: dict(m.get("harness")) for m in load().methods_of(kind) if m.get("harness")}


def harness_spec(method: str) -> dict:
    """The ``harness`` block of catalog method ``method`` ({} for an id the catalog does not have or the
    harness does not run)."""
    from profiles import load

    m = load().methods.get(method)
    return dict(m.get("harness") or {}) if m is not None else {}


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
