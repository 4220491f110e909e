"""Population (infinite-sample) EM for uniform mixtures of unit Gaussians.

With infinite data the average log-likelihood of the centers becomes
L(mu) = E_{X ~ f0} log f_mu(X), f0 the true mixture. This package computes
the population EM step, L, its gradient and Hessian to about 1e-10 with an
error estimate (a piecewise Gauss-Legendre rule on the reduced integrals, see
`pmstudy.population.core`), and runs population EM (`population_em`).

Modules: `reduction` (from R^d to r <= k - 1 dimensions), `_kernels`
(numba kernels), `quadrature` (the rule), `qmc` (r >= 4), `core`
(assembly and error estimates), `api` (public calls), `iterate`
(population EM and its convergence rule).
"""

from __future__ import annotations

from pmstudy.population.api import (
    population_gradient,
    population_hessian,
    population_loglik,
    population_step,
)
from pmstudy.population.iterate import PopulationResult, population_em

__all__ = [
    "PopulationResult",
    "population_em",
    "population_gradient",
    "population_hessian",
    "population_loglik",
    "population_step",
]
