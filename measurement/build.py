"""Build a model: the profile's exact architecture with random weights (fast), or real weights.

Random weights: the model is created on the meta device, moved with ``to_empty`` and initialized in
place (normal(0, 0.02) for matrices, ones for norms, zeros for biases); rotary ``inv_freq`` buffers are
then recomputed (``to_empty`` leaves them uninitialized). Real weights: a local directory with
``config.json`` and ``*.safetensors`` (never pickles), or a Hugging Face hub id (``use_safetensors=True``).
"""
from __future__ import annotations

from pathlib import Path


class WeightsError(ValueError):
    pass


def weights_kind(weights: str) -> str:
    if weights in (None, "", "random"):
        return "random"
    if Path(weights).exists():
        return "path"
    return "hf"


def profile_config(model_id: str, catalog=None):
    """transformers config for a profile id (llms.yaml), attention through sdpa."""
    from transformers import AutoConfig

    if catalog is None:
        from profiles import load

        catalog = load()
    llm = catalog.llm(model_id)
    cfg = AutoConfig.for_model(llm.model_type, **llm.hf_config_dict())
    cfg._attn_implementation = "sdpa"
    return cfg


def _reinit_rotary(model, device) -> None:
    """Rebuild every rotary-embedding module from its config (``to_empty`` left ``inv_freq`` garbage)."""
    import torch

    for name, mod in list(model.named_modules()):
        if isinstance(getattr(mod, "inv_freq", None), torch.Tensor) and name:
            cfg = getattr(mod, "config", model.config)
            new = type(mod)(cfg).to(device)
            parent = model
            parts = name.split(".")
            for p in parts[:-1]:
                parent = getattr(parent, p)
            setattr(parent, parts[-1], new)


def build_random(config, *, dtype=None, device="cuda", seed: int = 0, std: float = 0.02):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.bfloat16
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device=device)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=g)
        for name, b in model.named_buffers():
            if "inv_freq" not in name and b.is_floating_point():
                b.zero_()
    _reinit_rotary(model, device)
    model.eval()
    model.requires_grad_(False)
    return model


def build_model(model_id: str, *, weights: str = "random", device="cuda", dtype=None, catalog=None, config=None):
    """Returns (model, config, weights_source string)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = dtype or torch.bfloat16
    kind = weights_kind(weights)
    if kind == "random":
        cfg = config if config is not None else profile_config(model_id, catalog)
        return build_random(cfg, dtype=dtype, device=device), cfg, "random"
    if kind == "path":
        p = Path(weights)
        if not (p / "config.json").exists():
            raise WeightsError(f"{p}: no config.json")
        st = list(p.glob("*.safetensors"))
        if not st:
            raise WeightsError(f"{p}: no *.safetensors files (pickled checkpoints are never loaded)")
        cfg = AutoConfig.from_pretrained(str(p))
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype, use_safetensors=True,
                                                     attn_implementation="sdpa").to(device)
        model.eval().requires_grad_(False)
        return model, model.config, f"path:{p.resolve()}"
    cfg = AutoConfig.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, use_safetensors=True,
                                                 attn_implementation="sdpa").to(device)
    model.eval().requires_grad_(False)
    return model, model.config, f"hf:{weights}"
