"""A finite-difference Jacobian that perturbs many parameters at once where no row depends on two of them.

A residual vector of ``n_data`` rows followed by one prior residual per parameter (the layout of
:func:`models.engine_fit.fit_params`): parameter ``j`` moves only the rows in ``support[j]`` and its own prior
row. Parameters whose supports are disjoint share one perturbation (greedy colouring; Curtis, Powell and Reid,
"On the estimation of sparse Jacobian matrices", IMA J. Appl. Math. 13, 1974), so one Jacobian costs one
residual evaluation per colour instead of one per parameter. The steps have the size SciPy takes for '2-point'
differences (sqrt(machine epsilon) x max(1, |x|); forward, backward where a forward step would leave the bounds),
so the Jacobian agrees with the one ``least_squares`` estimates column by column to the order of the step
(tests/models/test_fd_jacobian.py); the engine fits it serves give the same parameters to 1e-6.
"""
from __future__ import annotations

import numpy as np

REL_STEP = float(np.sqrt(np.finfo(float).eps))


def colours(support: list[np.ndarray], n_data: int) -> list[list[int]]:
    """Groups of parameters whose data rows never overlap (largest supports placed first)."""
    groups: list[list[int]] = []
    taken: list[np.ndarray] = []
    for j in sorted(range(len(support)), key=lambda j: -len(support[j])):
        rows = support[j]
        for g, used in zip(groups, taken):
            if not used[rows].any():
                g.append(j)
                used[rows] = True
                break
        else:
            used = np.zeros(n_data, bool)
            used[rows] = True
            groups.append([j])
            taken.append(used)
    return groups


def grouped_jacobian(fun, support: list[np.ndarray], n_data: int, lo: np.ndarray, hi: np.ndarray):
    """``jac(x)`` for ``least_squares``: the forward-difference Jacobian of ``fun`` (``n_data`` rows, then one prior
    row per parameter) from one evaluation per colour of :func:`colours`."""
    groups = colours(support, n_data)

    def jac(x, *args, **kwargs):
        x = np.asarray(x, float)
        f0 = fun(x)
        h = REL_STEP * np.maximum(1.0, np.abs(x))
        h = np.where(x + h > hi, -h, h)
        J = np.zeros((len(f0), len(x)))
        for g in groups:
            xs = x.copy()
            xs[g] += h[g]
            step = xs - x  # the step as represented (SciPy divides by the same)
            df = fun(xs) - f0
            for j in g:
                rows = support[j]
                J[rows, j] = df[rows] / step[j]
                J[n_data + j, j] = df[n_data + j] / step[j]
        return J

    return jac
