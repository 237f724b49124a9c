"""The regional-graph decode step against transformers' own forward, on CPU (no CUDA graph here)."""
import pytest
import torch

from measurement.backends import FUSED_MODES
from measurement.build import build_random
from measurement.decode_graph import GraphDecoder, compile_layer
from measurement.runner import Runner
from measurement.store import RunConfig
from measurement.testing import tiny_config


def _qwen2_config():
    from transformers import Qwen2Config

    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    return cfg


def _reference_logits(model, ids, steps):
    """Greedy decode with transformers' DynamicCache: the logits of each step."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    tok = out.logits[:, -1:].argmax(-1)
    logits = []
    for _ in range(steps):
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1].float())
        tok = out.logits[:, -1:].argmax(-1)
    return tok, logits


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("make_cfg", [tiny_config, _qwen2_config], ids=["llama", "qwen2"])
def test_graph_decoder_matches_transformers(make_cfg, fuse):
    from transformers import StaticCache

    torch.manual_seed(0)
    cfg = make_cfg()
    model = build_random(cfg, dtype=torch.float32, device="cpu", std=0.2)
    B, P, G = 2, 12, 5
    ids = torch.randint(0, cfg.vocab_size, (B, P))
    with torch.inference_mode():
        _, ref = _reference_logits(model, ids, G)
        cache = StaticCache(config=cfg, max_cache_len=P + G + 1)
        tok0 = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        dec = GraphDecoder(model, cache, B, graph=False, fuse=fuse)
        dec.reset(tok0, P, P)
        if fuse:  # merged weights, and the layers' own weights are views of them (no extra memory)
            qkv_w, qkv_b, gu_w = dec.fused[0]
            attn = dec.layers[0].self_attn
            assert qkv_w is not None and gu_w is not None
            assert attn.k_proj.weight.data_ptr() == qkv_w[attn.q_proj.out_features:].data_ptr()
            assert dec.layers[0].mlp.up_proj.weight.data_ptr() == gu_w[gu_w.shape[0] // 2:].data_ptr()
            assert (qkv_b is not None) == (attn.q_proj.bias is not None)
        for i in range(G):
            got = dec.logits().float()
            torch.testing.assert_close(got, ref[i], rtol=1e-4, atol=1e-4)
            dec.step()
        assert int(dec.pos) == P + G and int(dec.slot) == P + G


def test_regional_compile_is_shared_by_layers():
    """One compiled layer function serves every decoder layer: depth does not multiply compile work."""
    import torch._dynamo

    torch._dynamo.reset()
    cfg = tiny_config(layers=4)
    model = build_random(cfg, dtype=torch.float32, device="cpu")
    from transformers import StaticCache

    fn = compile_layer("default")
    with torch.inference_mode():
        cache = StaticCache(config=cfg, max_cache_len=24)
        ids = torch.randint(0, cfg.vocab_size, (1, 8))
        tok0 = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        dec = GraphDecoder(model, cache, 1, layer_fn=fn, graph=False)
        dec.reset(tok0, 8, 8)
        ref = GraphDecoder(model, cache, 1, graph=False)
        ref.reset(tok0, 8, 8)
        torch.testing.assert_close(dec.logits(), ref.logits(), rtol=1e-4, atol=1e-4)
        frames = torch._dynamo.utils.counters["frames"]
        n = frames["ok"]
        for _ in range(3):
            dec.step()
        assert frames["ok"] == n  # no recompilation for the other layers or the next positions


@pytest.mark.parametrize("mode", ["regional-eager", "regional-graph-fused", "regional-graph-fused-cdt",
                                  "regional-graph-nocompile"])
def test_harness_regional_rows(tmp_path, mode):
    rc = dict(model="tiny", backend="compiled", batch=2, prompt_len=16, gen_len=4, trials=2,
              compile_mode=mode)
    cfgs = [RunConfig(**rc), RunConfig(**{**rc, "kv": "streamingllm", "kv_budget": 8}),
            RunConfig(**{**rc, "sparsity": "drop-1"})]
    rows = Runner(tmp_path, device="cpu", config_override=tiny_config()).run(cfgs)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"], [r.get("reason") for r in rows]
    assert all(r["compile_mode"] == mode and r["decode_ms_per_token"] > 0 for r in rows)
    merged = mode in FUSED_MODES
    assert all(("weights merged" in (r["method_notes"] or "")) == merged for r in rows)


def _graphs_after_each(shapes, dynamic_len_first: bool) -> list[int]:
    """Decode one step at each (batch, cache length) with one compiled layer function; the count of
    distinct compiled graphs after each."""
    import torch._dynamo
    from transformers import StaticCache

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = tiny_config(layers=2)
    model = build_random(cfg, dtype=torch.float32, device="cpu")
    fn = compile_layer("default")
    seen = []
    with torch.inference_mode():
        for i, (B, L) in enumerate(shapes):
            cache = StaticCache(config=cfg, max_cache_len=L)
            ids = torch.randint(0, cfg.vocab_size, (B, 8))
            tok0 = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
            dec = GraphDecoder(model, cache, B, layer_fn=fn, graph=False, dynamic_len=dynamic_len_first and i == 0)
            dec.reset(tok0, 8, 8)
            dec.step()
            seen.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return seen


def test_one_dynamic_graph_serves_later_shapes():
    """The first shape is specialized, the second compiles one dynamic graph, later shapes reuse it."""
    assert _graphs_after_each([(1, 24), (2, 40), (4, 56), (4, 72), (2, 72)], False) == [1, 2, 2, 2, 2]


def test_fusing_skips_quantized_or_sparse_layers():
    """Only plain 16-bit nn.Linear weights are merged; any other layer keeps its own kernel."""
    from measurement.decode_graph import fuse_projections

    cfg = tiny_config(layers=2)
    model = build_random(cfg, dtype=torch.float32, device="cpu")
    L0, L1 = model.model.layers
    L1.self_attn.k_proj = _Other(L1.self_attn.k_proj)
    assert fuse_projections(L0)[0] is not None
    qkv_w, _, gu_w = fuse_projections(L1)
    assert qkv_w is None and gu_w is not None
    assert fuse_projections(L1) is fuse_projections(L1)  # once per layer


class _Other(torch.nn.Linear):
    """A Linear subclass standing in for a quantized layer (bitsandbytes' are subclasses too)."""

    def __init__(self, lin):
        super().__init__(lin.in_features, lin.out_features, bias=lin.bias is not None)


def test_dynamic_length_from_the_first_call():
    """dynamic_len: the first graph already has a symbolic cache length, so batch 1 at another prompt length
    reuses it; one more graph (dynamic batch) serves every other shape. Without it batch 1 at another
    length costs a third graph (dynamo specializes a size of 1)."""
    shapes = [(1, 24), (4, 56), (1, 72), (2, 40), (4, 80)]
    assert _graphs_after_each(shapes, True) == [1, 2, 2, 2, 2]
    assert _graphs_after_each(shapes, False) == [1, 2, 3, 3, 3]
