"""measurement.tp: shard plans of catalog models, and N ranks (gloo, CPU) giving the logits of one."""
from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest

from measurement.tp import Unsupported, shard_plan
from profiles import load


def _tiny(**kw):
    d = dict(id="tiny", model_type="llama", num_hidden_layers=2, hidden_size=64, intermediate_size=96,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=101, attention_bias=False,
             raw={"rms_norm_eps": 1e-5, "rope_theta": 10000.0})
    d.update(kw)
    return SimpleNamespace(**d)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_plan_of_catalog_models_sums_back(tp):
    """Per-rank shards add up to the unsharded layer (KV heads counted once per replica)."""
    cat = load()
    for mid in ("llama3.1-8b", "llama3.1-70b", "qwen2.5-7b", "mistral-7b"):
        llm = cat.llm(mid)
        try:
            p = shard_plan(llm, tp)
        except Unsupported:
            assert llm.num_attention_heads % tp or llm.intermediate_size % tp
            continue
        one = shard_plan(llm, 1)
        assert p.q_heads * tp == one.q_heads
        assert p.inter * tp == one.inter
        assert p.kv_heads * tp == one.kv_heads * p.kv_replicas
        assert p.vocab * tp >= llm.vocab_size > (p.vocab - 1) * tp
        assert p.allreduce_bytes(8) == 8 * llm.hidden_size * 2


def test_plan_refuses_what_does_not_split():
    with pytest.raises(Unsupported, match="attention heads"):
        shard_plan(_tiny(num_attention_heads=6, num_key_value_heads=6), 4)
    with pytest.raises(Unsupported, match="intermediate"):
        shard_plan(_tiny(intermediate_size=90), 4)
    p = shard_plan(_tiny(), 4)  # 2 KV heads over 4 ranks: each held by 2 ranks
    assert (p.kv_heads, p.kv_replicas) == (1, 2)


def test_qwen_shards_carry_qkv_bias():
    assert shard_plan(load().llm("qwen2.5-7b"), 2).bias
    assert not shard_plan(load().llm("llama3.1-8b"), 2).bias


def _logits(tp, rank, group, llm, prompt, torch):
    from measurement.tp import Decoder, random_full, shard
    full = random_full(llm, seed=3, std=0.2)
    w = shard(full, llm, tp, rank)
    dec = Decoder(llm, shard_plan(llm, tp), w, group=group, rank=rank, max_pos=64)
    P = prompt.shape[1]
    caches = dec.new_caches(prompt.shape[0], P + 1)
    pre = dec.forward(prompt, torch.arange(P), caches, last_only=False)
    nxt = pre[:, -1:].argmax(-1)
    slot = torch.tensor([P])
    d = dec.forward(nxt, slot, caches, slot)
    return pre, d


def _worker(rank, world, port, llm, q):
    import torch
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, llm.vocab_size, (2, 7), generator=g)
        pre, d = _logits(world, rank, dist.group.WORLD, llm, prompt, torch)
        q.put((rank, pre.numpy(), d.numpy()))
    finally:
        dist.destroy_process_group()


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@pytest.mark.parametrize("world,kv", [(2, 2), (4, 2)])
def test_tensor_parallel_ranks_reproduce_one_rank(world, kv):
    torch = pytest.importorskip("torch")
    import numpy as np
    import torch.multiprocessing as mp
    llm = _tiny(num_key_value_heads=kv)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, llm.vocab_size, (2, 7), generator=g)
    ref_pre, ref_d = _logits(1, 0, None, llm, prompt, torch)
    assert ref_pre.shape == (2, 7, llm.vocab_size)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, llm, q)) for r in range(world)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, pre, d in got:
        np.testing.assert_allclose(pre, ref_pre.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(d, ref_d.numpy(), rtol=1e-4, atol=1e-4)
