"""pmstudy: a distributed Monte Carlo study of P_m for EM on Gaussian mixtures.

P_m is the probability that EM, started from a given initialization scheme,
reaches the global maximum of the likelihood when it fits the centers of a
uniform mixture of k unit-variance spherical Gaussians from m samples.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pmstudy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
