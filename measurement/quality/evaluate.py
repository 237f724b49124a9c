"""Perplexity protocols of the small-model quality campaign.

* ``ppl`` (weights / sparsity methods): the held-out token stream is cut into non-overlapping
  windows of ``seq_len`` tokens (stride = seq_len, the tail shorter than a window dropped); each
  window is one forward pass with no cache; positions 1..seq_len-1 are scored (seq_len-1
  predictions per window); ppl = exp(total NLL / predicted tokens).
* ``ppl_decode`` (KV-cache methods): the same windows; the first ``prefix`` tokens of each window are
  prefilled in one forward pass into the cache under test (eviction policies compress it at that
  point, as they would after a prompt), then the remaining ``seq_len - prefix`` tokens are fed one at
  a time through that cache, every one of them scored: the prediction of token ``prefix`` comes from
  the prefill's last position, each later one from a one-token decode step that reads the
  (quantized / evicted) cache. Position ids are the true positions in the window, whatever the cache
  holds. Its baseline is the same protocol with the plain full-precision cache, so KV deltas compare
  like with like.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def _windows(ids: torch.Tensor, seq_len: int, max_windows: int = 0) -> torch.Tensor:
    n_win = ids.numel() // seq_len
    if max_windows:
        n_win = min(n_win, max_windows)
    if n_win == 0:
        raise ValueError(f"text of {ids.numel()} tokens is shorter than one window of {seq_len}")
    return ids[: n_win * seq_len].view(n_win, seq_len)


def _device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def ppl(model, ids: torch.Tensor, seq_len: int = 512, batch_size: int = 16, max_windows: int = 0) -> dict:
    wins = _windows(ids, seq_len, max_windows)
    dev = _device(model)
    per_win: list[float] = []
    for i in range(0, wins.size(0), batch_size):
        x = wins[i: i + batch_size].to(dev)
        logits = model(input_ids=x, use_cache=False).logits
        tok = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), x[:, 1:], reduction="none")
        per_win += tok.double().sum(1).tolist()
    return _result(per_win, seq_len - 1)


def _result(per_win: list[float], tokens_per_window: int) -> dict:
    nll = math.fsum(per_win)
    n = tokens_per_window * len(per_win)
    if not math.isfinite(nll):
        raise FloatingPointError("non-finite NLL")
    return {"ppl": math.exp(nll / n), "n_tokens": n, "n_windows": len(per_win),
            "tokens_per_window": tokens_per_window, "window_nll": per_win}


def delta_ci(window_nll, base_window_nll, tokens_per_window: int, n_boot: int = 2000, seed: int = 0):
    """95% paired-bootstrap interval (over windows) of ppl / baseline_ppl - 1."""
    import numpy as np

    d = np.asarray(window_nll, dtype=float) - np.asarray(base_window_nll, dtype=float)
    if d.shape[0] < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.shape[0], size=(n_boot, d.shape[0]))
    boot = np.expm1(d[idx].mean(1) / tokens_per_window)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


@torch.no_grad()
def ppl_decode(model, ids: torch.Tensor, cache_factory: Callable[[int], object], seq_len: int = 512,
               prefix: int = 384, batch_size: int = 64, max_windows: int = 0) -> dict:
    """``cache_factory(batch)`` returns a fresh cache object (or None for the model's default)."""
    if not 0 < prefix < seq_len:
        raise ValueError("need 0 < prefix < seq_len")
    wins = _windows(ids, seq_len, max_windows)
    dev = _device(model)
    per_win: list[float] = []
    for i in range(0, wins.size(0), batch_size):
        x = wins[i: i + batch_size].to(dev)
        b = x.size(0)
        acc = torch.zeros(b, dtype=torch.float64, device=dev)
        cache = cache_factory(b)
        pos = torch.arange(prefix, device=dev).unsqueeze(0).expand(b, -1)
        kw = {"past_key_values": cache} if cache is not None else {}
        out = model(input_ids=x[:, :prefix], position_ids=pos, use_cache=True, logits_to_keep=1, **kw)
        cache = out.past_key_values
        logits = out.logits[:, -1]
        for t in range(prefix, seq_len):
            acc += F.cross_entropy(logits.float(), x[:, t], reduction="none").double()
            if t == seq_len - 1:
                break
            pos = torch.full((b, 1), t, device=dev, dtype=torch.long)
            out = model(input_ids=x[:, t: t + 1], position_ids=pos, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1]
        per_win += acc.tolist()
    return _result(per_win, seq_len - prefix)
