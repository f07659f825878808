"""jaxem: expectation-maximization for latent-variable models in JAX.

A model is a log-joint function ``log_joint(params, x) -> [K]`` for one observation plus an
initialiser; :func:`fit` runs EM (closed-form or gradient M-step) with restarts vmapped into one
compiled program.
"""

from . import _cache, constraints, hmm, init, models
from ._cache import disable_compilation_cache, enable_compilation_cache
from .em import FitError, FitResult, e_step, elbo, expected_log_joint, fit, log_likelihood
from .estep import Annealing
from .estimators import (
    BernoulliMixture,
    CategoricalMixture,
    ExponentialMixture,
    GammaMixture,
    GaussianMixture,
    IndependentMixture,
    KMeans,
    MixtureOfExperts,
    MixtureOfLinearRegressions,
    PoissonMixture,
    StudentTMixture,
)
from .hmm import CategoricalHMM, GaussianHMM, PoissonHMM
from .io import load, save
from .model import Model
from .models import (
    bernoulli_mixture,
    categorical_mixture,
    exponential_mixture,
    gamma_mixture,
    gaussian_mixture,
    independent_mixture,
    isotropic_mixture,
    mixture_of_experts,
    mixture_of_linear_regressions,
    poisson_mixture,
    student_t_mixture,
)
from .online import OnlineResult, fit_online
from .selection import ComponentSelection, select_components
from .streaming import fit_chunked, log_likelihood_chunked
from .validation import ConvergenceWarning, NotFittedError

__version__ = "0.1.0"

_cache.enable_on_import()

__all__ = [
    "CategoricalHMM",
    "GaussianHMM",
    "PoissonHMM",
    "hmm",
    "Annealing",
    "CategoricalMixture",
    "ExponentialMixture",
    "GammaMixture",
    "IndependentMixture",
    "KMeans",
    "isotropic_mixture",
    "PoissonMixture",
    "StudentTMixture",
    "categorical_mixture",
    "exponential_mixture",
    "gamma_mixture",
    "independent_mixture",
    "poisson_mixture",
    "student_t_mixture",
    "BernoulliMixture",
    "ConvergenceWarning",
    "GaussianMixture",
    "FitError",
    "FitResult",
    "Model",
    "NotFittedError",
    "bernoulli_mixture",
    "constraints",
    "disable_compilation_cache",
    "enable_compilation_cache",
    "e_step",
    "elbo",
    "expected_log_joint",
    "fit",
    "gaussian_mixture",
    "init",
    "load",
    "log_likelihood",
    "models",
    "save",
    "ComponentSelection",
    "MixtureOfExperts",
    "MixtureOfLinearRegressions",
    "mixture_of_experts",
    "mixture_of_linear_regressions",
    "select_components",
    "OnlineResult",
    "fit_chunked",
    "fit_online",
    "log_likelihood_chunked",
]
