"""The methods behind measurement.apply on CPU with a tiny Llama: every method that can run here runs for real."""
import pytest
import torch

from measurement.awq import _apply_awq_scales
from measurement.kv_cache import make_kv_cache, pyramid_budgets
from measurement.method_base import Unsupported, _dtype_of, decoder_layers, decoder_linears, notes_of
from measurement.precision import apply_precision
from measurement.sparsity import apply_sparsity, mask_2_4
from measurement.testing import tiny_config


def _model(layers=4, seed=0):
    from measurement.build import build_random

    return build_random(tiny_config(layers), dtype=torch.float32, device="cpu", seed=seed, std=0.2)


def _ids(b=2, t=48, seed=1):
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("p", ["bf16", "fp16"])
def test_16bit(p):
    m = _model()
    ref = m(_ids()).logits
    apply_precision(m, p)
    assert _dtype_of(m) == (torch.bfloat16 if p == "bf16" else torch.float16)
    assert _rel(m(_ids()).logits, ref) < 0.05


@pytest.mark.parametrize("p", ["bnb-int8", "bnb-nf4", "fp8", "gptq-int4", "awq-int4"])
def test_cpu_unsupported_has_reason(p):
    m = _model()
    with pytest.raises(Unsupported) as e:
        apply_precision(m, p)
    assert len(str(e.value)) > 10


def test_int8_wo_torchao_or_unsupported():
    pytest.importorskip("torchao")
    m = _model()
    ref = m(_ids()).logits
    apply_precision(m, "int8-wo")
    assert _rel(m(_ids()).logits, ref) < 0.1
    assert "Int8WeightOnly" in " ".join(notes_of(m))


def test_awq_simulated_beats_plain_int4():
    calib = [_ids(2, 64, seed=s) for s in range(3)]
    m0 = _model()
    ref = m0(_ids()).logits
    m1 = _model()
    apply_precision(m1, "awq-int4", calib_batches=calib, simulate=True)
    m2 = _model()
    apply_precision(m2, "awq-int4", simulate=True)
    e_awq, e_rtn = _rel(m1(_ids()).logits, ref), _rel(m2(_ids()).logits, ref)
    assert any("AWQ scales and weight clipping searched" in n for n in notes_of(m1))
    assert e_awq <= e_rtn * 1.05


def test_awq_scaling_alone_preserves_function():
    m = _model()
    ref = m(_ids()).logits
    _apply_awq_scales(m, [_ids(2, 64)], grid=5, max_rows=512, clip=False)
    assert _rel(m(_ids()).logits, ref) < 1e-4


def test_mask_2_4():
    w = torch.randn(8, 16)
    mask = mask_2_4(w.abs())
    assert mask.reshape(8, 4, 4).sum(-1).eq(2).all()
    kept = (w.abs() * mask).reshape(8, 4, 4).sum(-1)
    top2 = w.abs().reshape(8, 4, 4).topk(2, -1).values.sum(-1)
    assert torch.allclose(kept, top2)


@pytest.mark.parametrize("s", ["2:4-magnitude", "2:4-wanda"])
def test_2_4_masks_dense_on_cpu(s):
    m = _model()
    apply_sparsity(m, s, calib_batches=[_ids(2, 32)])
    for _, lin in decoder_linears(m):
        nz = (lin.weight != 0).reshape(lin.out_features, -1, 4).sum(-1)
        assert (nz <= 2).all()
    m(_ids())


def test_wanda_needs_calib():
    with pytest.raises(Unsupported):
        apply_sparsity(_model(), "2:4-wanda")


def test_drop_layers_block_influence():
    m = _model(layers=4)
    cfg_before = m.config
    apply_sparsity(m, "drop-2", calib_batches=[_ids(2, 32)])
    assert len(decoder_layers(m)) == 2 and m.config.num_hidden_layers == 2
    assert cfg_before.num_hidden_layers == 4  # a shared config object is not mutated
    assert [L.self_attn.layer_idx for L in decoder_layers(m)] == [0, 1]
    from transformers import DynamicCache

    out = m(_ids(), past_key_values=DynamicCache(config=m.config), use_cache=True)
    assert out.logits.shape[-1] == 256


def test_drop_layers_without_calib_drops_last_before_final():
    m = _model(layers=4)
    apply_sparsity(m, "drop-1")
    assert any("[2]" in n for n in notes_of(m))


def test_pyramid_budgets_mean():
    b = pyramid_budgets(1024, 32)
    assert sum(b) == 1024 * 32 and b[0] > b[-1]


def _teacher_forced(m, cache, ids, split):
    """Logits of ids[:, split:] fed one token at a time after a prefill of ids[:, :split]."""
    out = m(ids[:, :split], past_key_values=cache, use_cache=True)
    logits = [out.logits[:, -1]]
    for t in range(split, ids.shape[1] - 1):
        out = m(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


@pytest.mark.parametrize("kv,tol", [("kv-fp8", 0.2), ("kv-int8", 0.05), ("kv-int4", 0.4), ("kv-int2", 1.5)])
def test_quantized_kv_close_to_reference(kv, tol):
    from transformers import DynamicCache

    m = _model()
    ids = _ids(2, 200)
    ref = _teacher_forced(m, DynamicCache(config=m.config), ids, 150)
    cache, notes = make_kv_cache(kv, m.config, residual=16)
    got = _teacher_forced(m, cache, ids, 150)
    assert _rel(got, ref) < tol
    # most tokens are stored quantized; the memory is smaller than 16 bit
    assert cache.layers[0].n_quant > 100
    assert cache.nbytes() < sum(L.keys.numel() * 2 * 2 for L in cache.layers) * 200 / 16


@pytest.mark.parametrize("kv", ["streamingllm", "snapkv", "pyramidkv"])
def test_eviction_budget_and_positions(kv):
    from transformers import DynamicCache

    m = _model()
    ids = _ids(2, 120)
    cache, notes = make_kv_cache(kv, m.config, budget=40, model=m)
    got = _teacher_forced(m, cache, ids, 100)
    cache.detach()
    st = cache.stored_tokens()
    if kv == "pyramidkv":
        assert st[0] > st[-1] and abs(sum(st) / len(st) - (40 + 19)) <= 1
    elif kv == "snapkv":
        assert st == [40 + 19] * len(st)  # budget after prefill, decoded tokens appended
    else:
        assert st == [40] * len(st)
    assert cache.get_seq_length() == 119
    assert not any(L.used_query_proxy for L in cache.layers) or kv == "streamingllm"
    # with a budget above the length, eviction is exact
    ref = _teacher_forced(m, DynamicCache(config=m.config), ids, 100)
    big, _ = make_kv_cache(kv, m.config, budget=1000, model=m)
    assert _rel(_teacher_forced(m, big, ids, 100), ref) < 1e-5
    assert got.shape == ref.shape


def test_kv_fp16_is_default():
    cache, notes = make_kv_cache("kv-fp16", tiny_config())
    assert cache is None


def test_unknown_names():
    with pytest.raises(ValueError):
        apply_precision(_model(), "int3")
    with pytest.raises(ValueError):
        make_kv_cache("kv-int3", tiny_config())
