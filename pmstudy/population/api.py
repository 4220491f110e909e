"""Population EM step, log-likelihood, gradient and Hessian: the public calls.

Each takes the true centers (k0, d) and a batch of centers (B, k, d) and
returns the value with its estimated absolute error (B,); see
`pmstudy.population.core` for the definitions and the error estimates.
"""

from __future__ import annotations

import numpy as np

from pmstudy.population.core import DEFAULT_ACCURACY, evaluate


def population_step(
    centers_true: np.ndarray,
    centers: np.ndarray,
    *,
    accuracy: float = DEFAULT_ACCURACY,
) -> tuple[np.ndarray, np.ndarray]:
    """One population EM step T(mu)_j = E[w_j X] / E[w_j].

    Parameters
    ----------
    centers_true : np.ndarray
        (k0, d) true centers.
    centers : np.ndarray
        (B, k, d) current centers.
    accuracy : float
        Requested absolute accuracy.

    Returns
    -------
    next_centers : np.ndarray
        (B, k, d).
    error : np.ndarray
        (B,) estimated largest absolute error over the coordinates.
    """
    value, acc = evaluate("step", centers_true, centers, accuracy=accuracy)
    return value, acc.error


def population_loglik(
    centers_true: np.ndarray,
    centers: np.ndarray,
    *,
    accuracy: float = DEFAULT_ACCURACY,
) -> tuple[np.ndarray, np.ndarray]:
    """Population log-likelihood E_{X ~ f0} log f_mu(X), constants included.

    Returns
    -------
    loglik : np.ndarray
        (B,); loglik(centers_true) - loglik(mu) = KL(f0 || f_mu) >= 0.
    error : np.ndarray
        (B,) estimated absolute error.
    """
    value, acc = evaluate("loglik", centers_true, centers, accuracy=accuracy)
    return value, acc.error


def population_gradient(
    centers_true: np.ndarray,
    centers: np.ndarray,
    *,
    accuracy: float = DEFAULT_ACCURACY,
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of the population log-likelihood, grad_j = E[w_j (X - mu_j)].

    Returns
    -------
    gradient : np.ndarray
        (B, k, d); flattened as (B, k*d) it matches the Hessian's order.
    error : np.ndarray
        (B,) estimated largest absolute error over the coordinates.
    """
    value, acc = evaluate("gradient", centers_true, centers, accuracy=accuracy)
    return value, acc.error


def population_hessian(
    centers_true: np.ndarray,
    centers: np.ndarray,
    *,
    accuracy: float = DEFAULT_ACCURACY,
) -> tuple[np.ndarray, np.ndarray]:
    """Hessian of the population log-likelihood in the centers.

    Block (j, l) is E[w_j (delta_jl - w_l)(X - mu_j)(X - mu_l)^T]
    - delta_jl E[w_j] I.

    Returns
    -------
    hessian : np.ndarray
        (B, k*d, k*d), rows and columns ordered (center, axis), symmetric.
    error : np.ndarray
        (B,) estimated largest absolute error over the entries.
    """
    value, acc = evaluate("hessian", centers_true, centers, accuracy=accuracy)
    return value, acc.error
