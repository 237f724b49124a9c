"""GPU checks of the methods and both backends (run on the device machine: pytest -m gpu tests/measurement)."""
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from measurement.precision import apply_precision  # noqa: E402
from measurement.runner import Runner  # noqa: E402
from measurement.store import RunConfig  # noqa: E402
from measurement.testing import tiny_config  # noqa: E402


def _cfg():
    return tiny_config(layers=2, hidden=256, vocab=512)


def _rc(**kw):
    d = dict(model="tiny", batch=2, prompt_len=64, gen_len=8, trials=2)
    d.update(kw)
    return RunConfig(**d)


@pytest.mark.parametrize("p", ["bf16", "fp8", "int8-wo", "bnb-int8", "bnb-nf4", "awq-int4"])
def test_precision_eager_on_gpu(tmp_path, p):
    rows = Runner(tmp_path, device="cuda", config_override=_cfg(), measure_peaks=False).run(
        [_rc(precision=p, backend="eager")])
    assert rows[0]["status"] in ("ok", "unsupported"), rows[0].get("reason")


def test_compiled_static_cache_and_reset(tmp_path):
    rows = Runner(tmp_path, device="cuda", config_override=_cfg()).run(
        [_rc(backend="compiled", batch=1, prompt_len=512), _rc(backend="compiled", batch=4, prompt_len=128),
         _rc(backend="compiled", kv="snapkv", kv_budget=32, batch=2, prompt_len=128)])
    assert [r["status"] for r in rows] == ["ok"] * 3, [r.get("reason") for r in rows]
    assert all(r["decode_roofline_frac"] is None or r["decode_roofline_frac"] <= 1.0 for r in rows)


def test_2_4_semi_structured(tmp_path):
    rows = Runner(tmp_path, device="cuda", config_override=_cfg(), measure_peaks=False).run(
        [_rc(sparsity="2:4-magnitude", backend="eager", batch=16)])
    assert rows[0]["status"] in ("ok", "unsupported"), rows[0].get("reason")


def test_awq_int4_real_kernel_close():
    from measurement.build import build_random

    m = build_random(_cfg(), device="cuda")
    ids = torch.randint(0, 512, (2, 64), device="cuda")
    ref = m(ids).logits.float()
    apply_precision(m, "awq-int4", calib_batches=[ids])
    out = m(ids).logits.float()
    assert ((out - ref).norm() / ref.norm()).item() < 0.5


def test_graph_replay_matches_eager_step():
    """The captured CUDA graph of the regional decode step produces the tokens the uncaptured step does."""
    from transformers import StaticCache

    from measurement.build import build_random
    from measurement.decode_graph import GraphDecoder, compile_layer

    cfg = _cfg()
    model = build_random(cfg, dtype=torch.bfloat16, device="cuda", std=0.2)
    ids = torch.randint(0, cfg.vocab_size, (2, 32), device="cuda")
    outs = []
    with torch.inference_mode():
        for graph in (False, True):
            cache = StaticCache(config=cfg, max_cache_len=48)
            tok0 = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
            dec = GraphDecoder(model, cache, 2, layer_fn=compile_layer("default"), graph=graph)
            if graph:
                dec.reset(tok0, 32, 32)
                dec.capture()
            dec.reset(tok0, 32, 32)
            toks = []
            for _ in range(8):
                dec.step()
                toks.append(dec.tok.clone())
            outs.append(torch.cat(toks, 1))
    assert torch.equal(outs[0], outs[1])
