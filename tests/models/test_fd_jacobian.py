import numpy as np
from scipy.optimize._numdiff import approx_derivative

from models.fd_jacobian import colours, grouped_jacobian


def _problem(rng):
    """Residuals of 40 data rows then one prior row per parameter: parameter 0 moves every row, parameters
    1-4 each one block of 10 rows, parameter 5 rows 0-19 (so it may not share a perturbation with 1 or 2)."""
    n = 40
    support = [np.arange(n)] + [np.arange(10 * k, 10 * k + 10) for k in range(4)] + [np.arange(20)]
    W = rng.normal(size=(n, 6))

    def fun(x):
        cols = [np.where(np.isin(np.arange(n), s), W[:, j] * np.sin(x[j]) + x[j] ** 2, 0.0) for j, s in enumerate(support)]
        return np.concatenate([np.sum(cols, axis=0) * np.exp(0.1 * x[0]), (x - 0.3) / 0.5])
    return fun, support, n


def test_colours_never_share_a_row():
    fun, support, n = _problem(np.random.default_rng(0))
    groups = colours(support, n)
    for g in groups:
        rows = np.concatenate([support[j] for j in g])
        assert len(rows) == len(set(rows.tolist()))
    assert sorted(j for g in groups for j in g) == list(range(len(support)))
    assert len(groups) < len(support)  # blocks 3 and 4 ride with others


def test_it_is_scipys_two_point_jacobian():
    fun, support, n = _problem(np.random.default_rng(1))
    lo, hi = np.full(6, -2.0), np.full(6, 2.0)
    x = np.array([0.4, -1.0, 0.2, 1.5, 2.0 - 1e-12, 0.0])  # one parameter at its upper bound: a backward step
    J = grouped_jacobian(fun, support, n, lo, hi)(x)
    ref = approx_derivative(fun, x, method="2-point", bounds=(lo, hi))
    assert np.allclose(J, ref, rtol=1e-6, atol=1e-6)
