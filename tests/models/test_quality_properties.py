"""Issue 11's orders, checked over the whole catalog: no gain, fewer bits never lose less, a larger model of
the same family never loses more, a milder budget never loses more. Property-based (hypothesis) where a
space is sampled, exhaustive where the catalog is small enough."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.candidate import Candidate
from models.quality import KINDS, QualityModel
from profiles import load

CAT = load()
Q = QualityModel.from_catalog(CAT)
EPS = 1e-9


def _loss(model, comp, budget=None, kind="ppl_delta"):
    c = Q.component(CAT.llm(model), comp, budget, kind)
    return None if c is None else c.loss


def _chains():
    by = {}
    for m in CAT.methods.values():
        for ch in m.get("quality_chains") or ():
            by.setdefault(ch, []).append(m)
    return by


def test_no_component_anywhere_shows_a_gain():
    for llm, m, kind in itertools.product(CAT.llms.values(), CAT.methods.values(), KINDS):
        budgets = [None] + ([256, 1024, 4096] if m.id in ("streamingllm", "snapkv", "pyramidkv") else [])
        for b in budgets:
            c = Q.component(llm, (m.kind, m.id), b, kind)
            if c is not None:
                assert c.loss >= 0 and c.low >= 0 and c.low <= c.loss <= c.high, (llm.id, m.id, b, kind, c)


def test_fewer_bits_never_lose_less_within_a_chain():
    n = 0
    for chain, members in _chains().items():
        for a, b in itertools.permutations(members, 2):
            if float(a.get("quality_bits")) <= float(b.get("quality_bits")):
                continue  # a has more bits than b below
            for llm, kind in itertools.product(CAT.llms.values(), KINDS):
                la, lb = _loss(llm.id, (a.kind, a.id), kind=kind), _loss(llm.id, (b.kind, b.id), kind=kind)
                if la is not None and lb is not None:
                    n += 1
                    assert lb >= la - EPS, (chain, llm.id, kind, a.id, la, b.id, lb)
    assert n > 50


def _size_pairs():
    """(smaller, larger) catalog models of one family."""
    fams = {}
    for llm in CAT.llms.values():
        fams.setdefault(llm.family, []).append(llm)
    return [(s, b) for members in fams.values() for s, b in itertools.permutations(members, 2)
            if s.published_params_b < b.published_params_b]


def test_a_larger_model_of_the_family_never_loses_more():
    n = 0
    for small, big in _size_pairs():
        for m, kind in itertools.product(CAT.methods.values(), KINDS):
            ls, lb = _loss(small.id, (m.kind, m.id), kind=kind), _loss(big.id, (m.kind, m.id), kind=kind)
            if ls is not None and lb is not None:
                n += 1
                assert ls >= lb - EPS, (m.id, kind, small.id, ls, big.id, lb)
    assert n > 100


@settings(max_examples=150, deadline=None)
@given(model=st.sampled_from(sorted(CAT.llms)), policy=st.sampled_from(["streamingllm", "snapkv", "pyramidkv"]),
       b1=st.integers(16, 65536), b2=st.integers(16, 65536), kind=st.sampled_from(KINDS))
def test_a_larger_kv_budget_never_loses_more(model, policy, b1, b2, kind):
    lo, hi = sorted((b1, b2))
    a, b = _loss(model, ("kv", policy), lo, kind), _loss(model, ("kv", policy), hi, kind)
    if a is not None and b is not None:
        assert a >= b - EPS


@settings(max_examples=100, deadline=None)
@given(model=st.sampled_from(sorted(CAT.llms)), d1=st.integers(1, 40), d2=st.integers(1, 40))
def test_dropping_more_layers_never_loses_less(model, d1, d2):
    llm = CAT.llm(model)
    lo, hi = sorted((min(d1, llm.num_hidden_layers - 1), min(d2, llm.num_hidden_layers - 1)))
    a = Q.predict(llm, Candidate("bf16", sparsity=f"drop-{lo}"))[0]
    b = Q.predict(llm, Candidate("bf16", sparsity=f"drop-{hi}"))[0]
    if a is not None and b is not None:
        assert b.value >= a.value - EPS


def test_awq_and_gptq_agree_on_the_same_metric_for_llama31_8b():
    a = _loss("llama3.1-8b", ("precision", "awq-int4"))
    g = _loss("llama3.1-8b", ("precision", "gptq-int4"))
    assert a is not None and g is not None
    assert abs(a - g) * 100 <= 1.0  # points of relative perplexity increase


@pytest.mark.parametrize("kind", KINDS)
def test_eviction_within_its_budget_loses_nothing(kind):
    llm = CAT.llm("llama3.1-8b")
    est, parts, _ = Q.predict(llm, Candidate("bf16", kv="snapkv", kv_budget=4096), kind, context=2048)
    assert est is not None and est.value == 0 and parts[-1].rule == "within-budget"


def _evicted(model, policy, budget, context, kind):
    c = Q.component(CAT.llm(model), ("kv", policy), budget, kind, context)
    return c


@settings(max_examples=150, deadline=None)
@given(model=st.sampled_from(sorted(CAT.llms)), policy=st.sampled_from(["streamingllm", "snapkv", "pyramidkv"]),
       b1=st.integers(16, 65536), b2=st.integers(16, 65536), c1=st.integers(64, 262144), c2=st.integers(64, 262144),
       kind=st.sampled_from(KINDS))
def test_eviction_past_its_budget_is_monotone_in_budget_and_context(model, policy, b1, b2, c1, c2, kind):
    """The law in context/budget: at one context a larger budget never loses more; at one budget a longer
    context never loses less; never a gain, and the figure inside its interval."""
    (blo, bhi), (clo, chi) = sorted((b1, b2)), sorted((c1, c2))
    for b, c in ((blo, chi), (bhi, chi), (blo, clo)):
        x = _evicted(model, policy, b, c, kind)
        if x is not None:
            assert 0 <= x.low <= x.loss <= x.high, (model, policy, b, c, kind, x)
    small, big = _evicted(model, policy, blo, chi, kind), _evicted(model, policy, bhi, chi, kind)
    if small is not None and big is not None:
        assert small.loss >= big.loss - EPS
    short, long = _evicted(model, policy, blo, clo, kind), _evicted(model, policy, blo, chi, kind)
    if short is not None and long is not None:
        assert long.loss >= short.loss - EPS


def test_eviction_past_its_budget_a_larger_model_never_loses_more():
    n = 0
    for small, big in _size_pairs():
        for policy, kind, (b, c) in itertools.product(("streamingllm", "snapkv", "pyramidkv"), KINDS,
                                                      ((1024, 4096), (2048, 8192), (1024, 131072))):
            s, g = _evicted(small.id, policy, b, c, kind), _evicted(big.id, policy, b, c, kind)
            if s is not None and g is not None:
                n += 1
                assert s.loss >= g.loss - EPS, (policy, kind, b, c, small.id, s.loss, big.id, g.loss)
    assert n > 50
