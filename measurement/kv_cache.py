"""KV-cache policies as real :class:`transformers.Cache` subclasses (:func:`make_kv_cache`): quantized on
write (kv-fp8 / kv-int8 / kv-int4 / kv-int2: groups along head_dim, a 16-bit residual of the most recent
tokens, dequantized on read) or evicted to a budget in tokens (streamingllm, snapkv, pyramidkv with
per-layer budgets from :func:`pyramid_budgets`). transformers is imported only when a cache is made.

Which cache a policy gets is data: its ``harness`` block in profiles/data/methods.yaml names an entry of
:data:`IMPLEMENTATIONS` (``impl``: model_cache, quantize, evict) and its parameters (``nbits`` and float ``codes``
of a quantized cache; ``keep`` and ``layer_budgets`` of an evicting one).
"""
from __future__ import annotations

import math

from .method_base import _torch, decoder_layers, harness_specs

_SPECS = harness_specs("kv")
KV_POLICIES = tuple(_SPECS)
KV_QUANT = {k: h["nbits"] for k, h in _SPECS.items() if h["impl"] == "quantize"}  # id -> bits per code
KV_EVICT = tuple(k for k, h in _SPECS.items() if h["impl"] == "evict")
KV_GROUP = 64  # elements along head_dim per scale (and zero) of a quantized cache
FP16_BYTES = 2  # a 16-bit element: the cache in the model's dtype, and each scale / zero of a quantized one
FLOAT_CODES = {"float8_e4m3fn": "fp8 e4m3"}  # torch dtypes of float codes (``codes``) -> how notes name them


def kv_spec(kv: str) -> dict:
    """The ``harness`` block of KV policy ``kv`` ({} if the harness does not run it)."""
    return _SPECS.get(kv, {})


def stored_bytes_per_elem(kv: str, group: int = KV_GROUP) -> float:
    """Bytes per K or V element in the harness's cache for ``kv``: a quantized one stores ``nbits``/8 bytes of
    code plus, per ``group`` elements, an fp16 scale (and an fp16 zero for integer codes; its 16-bit residual
    of recent tokens is not counted); every other policy stores 16 bits."""
    h = _SPECS.get(kv, {})
    if h.get("impl") != "quantize":
        return float(FP16_BYTES)
    return h["nbits"] / 8 + (FP16_BYTES if h.get("codes") else 2 * FP16_BYTES) / group


def _kv_layer_classes():
    """Build the cache layer classes lazily (transformers is imported only here)."""
    torch = _torch()
    from transformers.cache_utils import DynamicLayer

    class QuantKVLayer(DynamicLayer):
        """K/V quantized on write in groups of ``group`` along head_dim (scale + zero per group), a residual
        of the most recent ``residual`` tokens kept in 16 bit, everything dequantized on read.
        ``nbits`` in (8, 4, 2): asymmetric integer codes packed into uint8; ``codes`` (a torch float dtype name,
        e.g. float8_e4m3fn): float codes of that dtype with one scale per group."""

        is_compileable = False

        def __init__(self, nbits, group: int = KV_GROUP, residual: int = 128, codes: str | None = None, **kw):
            super().__init__()
            self.nbits, self.group, self.residual, self.codes = nbits, group, residual, codes
            self.q = {"k": None, "v": None}  # (codes, scale, zero, n_tokens)
            self.n_quant = 0
            self.cumulative_length = 0

        # packing ---------------------------------------------------------------------------
        def _quant(self, x):
            B, H, T, D = x.shape
            g = self.group if D % self.group == 0 else D
            xf = x.float().reshape(B, H, T, D // g, g)
            if self.codes:
                dt = getattr(torch, self.codes)
                scale = (xf.abs().amax(-1, keepdim=True) / torch.finfo(dt).max).clamp(min=1e-8)
                codes = (xf / scale).to(dt)
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
            if self.codes:
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
        """16-bit KV kept to a token budget. ``keep``: sinks (StreamingLLM: ``sinks`` first tokens + recent
        window, enforced on every write) or attended (SnapKV/PyramidKV: after prefill keep the prompt tokens most
        attended by the last ``window`` prompt queries, max-pooled over ``pool`` neighbours, per KV head, then
        append decoded tokens). Prefill attends to the whole prompt; eviction applies to what is stored."""

        is_compileable = False

        def __init__(self, keep, budget, *, sinks=4, window=32, pool=7, **kw):
            super().__init__()
            self.keep, self.budget = keep, int(budget)
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
            if self.keep == "sinks":
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
                  group: int = KV_GROUP, window: int = 32, sinks: int = 4, **kw):
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
    spec = _SPECS[k]
    return IMPLEMENTATIONS[spec["impl"]](k, spec, config, budget=budget, model=model, residual=residual,
                                        group=group, window=window, sinks=sinks)


def _model_cache(k, spec, config, **_):
    return None, "16-bit KV (model default cache)"


def _n_layers(config) -> int:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(cfg.num_hidden_layers)


def _quantize(k, spec, config, *, residual, group, **_):
    n = _n_layers(config)
    QuantKVLayer, _ = _kv_layer_classes()
    Cls = _kv_cache_class()
    nbits, codes = spec["nbits"], spec.get("codes")
    layers = [QuantKVLayer(nbits, group=group, residual=residual, codes=codes) for _ in range(n)]
    notes = (f"{k}: {f'{FLOAT_CODES[codes]} + fp16 scale' if codes else f'int{nbits} asymmetric'} per group of "
             f"{group} along head_dim, last {residual} tokens in 16 bit, dequantized on read")
    return Cls(layers, k, notes), notes


def _evict(k, spec, config, *, budget, model, window, sinks, **_):
    n = _n_layers(config)
    _, EvictKVLayer = _kv_layer_classes()
    Cls = _kv_cache_class()
    if budget is None or int(budget) <= 0:
        raise ValueError(f"{k} needs a positive budget (tokens)")
    budget = int(budget)
    keep = spec["keep"]
    if keep == "sinks":
        if budget <= sinks:
            raise ValueError(f"{k} budget must exceed the {sinks} sink tokens")
        layers = [EvictKVLayer(keep, budget, sinks=sinks) for _ in range(n)]
        notes = f"{k}: {sinks} sink tokens + recent window, {budget} tokens"
    elif spec.get("layer_budgets") == "pyramid":
        bl = pyramid_budgets(budget, n)
        layers = [EvictKVLayer(keep, b, window=window) for b in bl]
        notes = f"{k}: per-layer budgets {bl[0]}..{bl[-1]} (mean {budget}), snapkv selection"
    else:
        layers = [EvictKVLayer(keep, budget, window=window) for _ in range(n)]
        notes = f"{k}: prompt KV selected by the last {window} queries (max-pool 7), {budget} tokens per layer"
    cache = Cls(layers, k, notes)
    if model is not None:
        cache.attach(model)
    elif keep != "sinks":
        notes += "; no model attached: window keys stand in for queries"
    return cache, notes


# methods.yaml ``harness.impl`` -> the function that makes the cache
IMPLEMENTATIONS = {"model_cache": _model_cache, "quantize": _quantize, "evict": _evict}
