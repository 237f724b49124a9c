"""The small Llama-architecture model of the quality campaign: build, train, save, load.

Torch and transformers are imported here only (never by the core CLI).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .corpus import DATA_DIR

MODEL_ID = "kjv-llama-7m"
WEIGHTS_NAME = f"{MODEL_ID}.safetensors"
WEIGHTS_PATH = DATA_DIR / WEIGHTS_NAME
CONFIG_PATH = DATA_DIR / "config.json"

# Dims are multiples of 128 (int4 group 128, 2:4 kernels); GQA: 4 query heads over 2 KV heads,
# head_dim 64. 7.34M parameters = 14.7 MB in bf16. Size limits that set it: a file returned from
# the device's $OUT must be <= 16 MiB, and the kept file travels with every device call next to
# the bitsandbytes + torchao wheels (46.5 MB) under the 64 MiB working-tree limit.
SMALL = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    hidden_act="silu",
    initializer_range=0.02,
)
# CPU tests.
TINY = dict(SMALL, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)


def make_config(arch: dict, tok=None):
    from transformers import LlamaConfig

    kw = dict(arch)
    if tok is not None:
        from .corpus import EOS

        eos = tok.token_to_id(EOS)
        kw.update(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, vocab_size=tok.get_vocab_size())
    cfg = LlamaConfig(**kw)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def build_model(config, device="cpu", dtype=torch.float32):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    return model.to(device=device, dtype=dtype)


def n_params(model) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def save_model(model, path: Path, config_path: Path | None = None, metadata: dict | None = None) -> Path:
    """bf16 safetensors (tied lm_head not stored twice) + config.json."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    if config_path is not None:
        model.config.to_json_file(str(config_path))
    return path


def load_model(path: Path = WEIGHTS_PATH, config_path: Path = CONFIG_PATH, device="cpu",
               dtype=torch.bfloat16):
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_json_file(str(config_path))
    model = LlamaForCausalLM(config)
    sd = load_file(str(path))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"weights do not match config: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model


# ----------------------------------------------------------------------------- training
@dataclass
class TrainSettings:
    """Warmup-stable-decay schedule: linear warmup, constant lr, then a linear decay to 0 that starts
    when validation ppl has not improved by ``min_improve`` for ``patience`` evaluations (the model
    starts to overfit the 1M-token corpus), or at ``decay_at`` of ``max_steps`` / of ``time_budget_s``,
    whichever comes first. The decay lasts ``decay_frac`` x the steps done before it (cut to the time
    left). The checkpoint with the best validation ppl is kept."""

    seq_len: int = 512
    batch_size: int = 64
    max_steps: int = 3000
    time_budget_s: float = 180.0
    lr: float = 1.5e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    dropout: float = 0.1  # residual dropout (attention and MLP outputs, embeddings) via hooks
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_windows: int = 0  # 0 = the whole validation split
    patience: int = 3
    min_improve: float = 0.002
    decay_at: float = 0.8
    decay_frac: float = 0.25
    schedule: str = "wsd"  # or "cosine": warmup, then cosine to min_lr_frac at max_steps
    min_lr_frac: float = 0.1
    seed: int = 0
    log: list = field(default_factory=list)


def _add_dropout(model, p: float):
    if p <= 0:
        return []

    def hook(mod, inp, out):
        if isinstance(out, tuple):
            return (F.dropout(out[0], p, mod.training),) + tuple(out[1:])
        return F.dropout(out, p, mod.training)

    hs = [model.model.embed_tokens.register_forward_hook(hook)]
    for layer in model.model.layers:
        hs.append(layer.self_attn.register_forward_hook(hook))
        hs.append(layer.mlp.register_forward_hook(hook))
    return hs


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, seq_len: int, batch_size: int = 32, max_windows: int = 0,
               autocast: bool = False) -> tuple[float, int]:
    """Sum of next-token NLL over non-overlapping windows (stride = seq_len), and the token count.

    Each window is scored independently: positions 1..seq_len-1 are predicted from the window's own
    prefix (seq_len-1 predicted tokens per window); the tail shorter than seq_len is dropped.
    """
    n_win = ids.numel() // seq_len
    if max_windows:
        n_win = min(n_win, max_windows)
    wins = ids[: n_win * seq_len].view(n_win, seq_len)
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, n_win, batch_size):
        x = wins[i: i + batch_size].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast and dev.type == "cuda"):
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1),
                               reduction="sum")
        total += float(loss)
        count += x[:, 1:].numel()
    return total, count


def train(model, train_ids: torch.Tensor, val_ids: torch.Tensor, s: TrainSettings,
          log_fn: Callable[[dict], None] = print, should_stop: Callable[[], bool] = lambda: False):
    """AdamW, bf16 autocast over fp32 master weights on CUDA, WSD schedule, best-val checkpoint.

    Returns (model with the best validation weights loaded, summary dict).
    """
    dev = next(model.parameters()).device
    cuda = dev.type == "cuda"
    g = torch.Generator(device="cpu").manual_seed(s.seed)
    train_ids = train_ids.to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if cuda else {}))
    hooks = _add_dropout(model, s.dropout)
    offs = torch.arange(s.seq_len + 1, device=dev)
    n_start = train_ids.numel() - s.seq_len - 1
    best = {"val_ppl": math.inf, "step": -1, "state": None}
    t0 = time.perf_counter()
    step, tokens, last_loss = 0, 0, float("nan")

    def evaluate():
        model.eval()
        nll, n = window_nll(model, val_ids, s.seq_len, batch_size=32, max_windows=s.eval_windows,
                            autocast=cuda)
        model.train()
        return math.exp(nll / n)

    model.train()
    decay_start, decay_len, stale, plateau_best = None, None, 0, math.inf
    while True:
        if s.schedule == "cosine":
            stop = step >= s.max_steps or bool(s.time_budget_s and time.perf_counter() - t0 >= s.time_budget_s)
        else:
            stop = decay_start is not None and step >= decay_start + decay_len
        if step % s.eval_every == 0 or stop or should_stop():
            if cuda:
                torch.cuda.synchronize()
            vppl = evaluate()
            el = time.perf_counter() - t0
            rec = {"step": step, "train_loss": last_loss, "val_ppl": vppl, "elapsed_s": round(el, 2),
                   "tokens": tokens, "tok_per_s": round(tokens / el) if el > 0 else None,
                   "lr": opt.param_groups[0]["lr"], "phase": s.schedule if s.schedule != "wsd" else ("decay" if decay_start is not None else "stable")}
            s.log.append(rec)
            log_fn(rec)
            if vppl < best["val_ppl"]:
                best.update(val_ppl=vppl, step=step,
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})
            if vppl < plateau_best * (1 - s.min_improve):
                plateau_best, stale = vppl, 0
            elif step > s.warmup_steps:
                stale += 1
            if stop or should_stop():
                break
        el = time.perf_counter() - t0
        if s.schedule == "wsd" and decay_start is None and step >= s.warmup_steps and (
                stale >= s.patience or step >= s.decay_at * s.max_steps
                or (s.time_budget_s and el >= s.decay_at * s.time_budget_s)):
            per_step = el / max(step, 1)
            left = max(1, int((s.time_budget_s - el) / per_step)) if s.time_budget_s else 10**9
            decay_start = step
            decay_len = max(1, min(int(s.decay_frac * step), left, s.max_steps - step))
            why = "plateau" if stale >= s.patience else "step/time cap"
            log_fn({"event": f"decay starts at step {step} ({why}), {decay_len} steps"})
        if step < s.warmup_steps:
            lr = s.lr * (step + 1) / s.warmup_steps
        elif s.schedule == "cosine":
            frac = min(1.0, (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps))
            lr = s.lr * (s.min_lr_frac + (1 - s.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        elif decay_start is None:
            lr = s.lr
        else:
            lr = s.lr * max(0.0, 1 - (step - decay_start) / decay_len)
        for pg in opt.param_groups:
            pg["lr"] = lr
        starts = torch.randint(0, n_start, (s.batch_size,), generator=g).to(dev)
        batch = train_ids[starts[:, None] + offs]
        x, y = batch[:, :-1], batch[:, 1:]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        step += 1
        tokens += x.numel()
        if step % 10 == 0 or step < 10:
            last_loss = float(loss.detach())
    for h in hooks:
        h.remove()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    wall = time.perf_counter() - t0
    summary = {"steps": step, "tokens": tokens, "train_wall_s": round(wall, 2), "best_step": best["step"],
               "best_val_ppl": best["val_ppl"], "final_val_ppl": s.log[-1]["val_ppl"] if s.log else None,
               "decay_start": decay_start, "decay_len": decay_len,
               "settings": {k: v for k, v in s.__dict__.items() if k != "log"}}
    return model, summary


def write_train_log(path: Path, summary: dict, log: list, extra: dict | None = None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**(extra or {}), **summary, "log": log}, indent=1, default=str) + "\n")
