import numpy as np
import pytest

from models.serving import erlang_c, serving_latency, simulate, wait_quantile


def test_erlang_c_known_value():
    # M/M/1: P(wait) = rho.
    assert erlang_c(1, 0.7) == pytest.approx(0.7)
    # M/M/2 with a = 1: C = 1/3 (textbook value).
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)


@pytest.mark.parametrize("lam,c,S", [(5, 8, 1.0), (7, 8, 1.0), (15, 16, 1.0), (30, 64, 2.0), (2, 4, 1.5)])
def test_mmc_wait_is_conservative_against_simulation(lam, c, S):
    des = float(np.quantile(simulate(lam, c, S, n=20000, seed=1), 0.95))
    model = wait_quantile(c, lam, S)
    assert model >= des * 0.95  # never optimistic (beyond simulation noise)
    assert model <= des * 3.0 + 0.1 * S  # and not absurdly pessimistic


def test_unstable_load_is_flagged():
    assert not serving_latency(lam=100, c=8, tau0_s=0.02, t_pre_s=0.05, gen_len=256).stable
    assert wait_quantile(4, 10, 1.0) == float("inf")


def test_prefill_load_stretches_tpot():
    light = serving_latency(0.1, 32, 0.02, 0.1, 256)
    heavy = serving_latency(5.0, 32, 0.02, 0.1, 256)
    assert heavy.tau_s == pytest.approx(0.02 / (1 - 0.5))
    assert light.tau_s < heavy.tau_s
