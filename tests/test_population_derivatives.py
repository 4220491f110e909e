"""Gradient and Hessian against Richardson-extrapolated finite differences.

With central differences D(h) of a function known to an absolute error e,
the extrapolation (4 D(h/2) - D(h)) / 3 errs by O(h^4) from truncation plus
about 3 e / h from the error in the values. With h = 2e-3 and e ~ 1e-13
both terms are below 1e-9, the tolerance used.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pmstudy.population import (
    population_gradient,
    population_hessian,
    population_loglik,
)

TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])
STEP = 2e-3
TOLERANCE = 1e-9


def _richardson(f, x: np.ndarray) -> np.ndarray:
    """(n_out, n_in) derivative of f: (n_in,) -> (n_out,) at x."""
    cols = []
    for i in range(x.size):
        est = []
        for h in (STEP, STEP / 2):
            e = np.zeros_like(x)
            e[i] = h
            est.append((f(x + e) - f(x - e)) / (2 * h))
        cols.append((4 * est[1] - est[0]) / 3)
    return np.stack(cols, axis=-1)


def _cases():
    rng = np.random.default_rng(8)
    return [
        (np.array([[0.0], [1.0], [4.0]]), np.array([[0.3], [1.4], [3.2]])),
        (3.0 * TRIANGLE, 3.0 * TRIANGLE + 0.5 * rng.standard_normal((3, 2))),
        (np.array([[0.0], [2.0], [8.0]]), np.array([[1.0], [7.5], [8.3]])),
        # d = 3 with k = 3: r = 2 and a non-trivial orthogonal part.
        (rng.standard_normal((3, 3)) * 2.0, rng.standard_normal((3, 3)) * 2.0),
    ]


@pytest.mark.parametrize("case", range(4))
def test_gradient_matches_finite_differences(case):
    centers_true, centers = _cases()[case]
    shape = centers.shape

    def loglik(flat):
        return population_loglik(centers_true, flat.reshape((1,) + shape))[0]

    grad, err = population_gradient(centers_true, centers[None])
    fd = _richardson(loglik, centers.ravel())[0]
    assert np.abs(grad[0].ravel() - fd).max() <= TOLERANCE + err[0]


@pytest.mark.parametrize("case", range(4))
def test_hessian_matches_finite_differences(case):
    centers_true, centers = _cases()[case]
    shape = centers.shape

    def gradient(flat):
        return population_gradient(centers_true, flat.reshape((1,) + shape))[0][
            0
        ].ravel()

    hess, err = population_hessian(centers_true, centers[None])
    fd = _richardson(gradient, centers.ravel())
    assert np.abs(hess[0] - fd).max() <= TOLERANCE + err[0]
    np.testing.assert_array_equal(hess[0], hess[0].T)
