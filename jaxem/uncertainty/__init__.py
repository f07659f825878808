"""Uncertainty of a fit by resampling: the bootstrap (nonparametric and parametric), all replicates
one batched fit, components matched to the original fit's labels."""

from .bootstrap import BootstrapResult, bootstrap
from .matching import assignment, match_components
from .sampling import mixture_sampler

__all__ = ["assignment", "bootstrap", "BootstrapResult", "match_components", "mixture_sampler"]
