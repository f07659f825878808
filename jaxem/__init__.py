"""jaxem: expectation-maximization for latent-variable models in JAX.

A model is a log-joint function ``log_joint(params, x) -> [K]`` for one observation plus an
initialiser; :func:`fit` runs EM (closed-form or gradient M-step) with restarts vmapped into one
compiled program. This module is the public surface; ``ARCHITECTURE.md`` maps the folders behind it.
"""

from . import _legacy, hmm, models
from .app.io import load, save
from .app.selection import ComponentSelection, select_components
from .core import compile_cache as _compile_cache
from .core import constraints
from .core.ascent import EMGradient
from .core.checkpoint import Checkpoint
from .core.compile_cache import disable_compilation_cache, enable_compilation_cache
from .core.estep import Annealing
from .core.inference import e_step, elbo, expected_log_joint, log_likelihood
from .core.information import empirical_information, louis_information, observed_information
from .core.many import fit_many
from .core.model import Model
from .core.programs import free_compiled_programs
from .core.result import FitError, FitInterrupted, FitResult
from .core.runner import fit
from .core.standard_errors import IllConditionedWarning, confidence_intervals, standard_errors
from .core.validation import ConvergenceWarning
from .estimators import (
    GMMHMM,
    BayesianGaussianMixture,
    BernoulliMixture,
    CategoricalHMM,
    CategoricalMixture,
    ExponentialMixture,
    GammaMixture,
    GaussianHMM,
    GaussianMixture,
    IndependentMixture,
    KMeans,
    LinearAutoregressiveHMM,
    MixtureOfExperts,
    MixtureOfFactorAnalysers,
    MixtureOfLinearRegressions,
    MixtureOfPPCA,
    MultinomialHMM,
    PoissonHMM,
    PoissonMixture,
    StudentTMixture,
)
from .estimators.compat import NotFittedError
from .models import (
    bayesian_gaussian_mixture,
    bernoulli_mixture,
    categorical_mixture,
    exponential_mixture,
    gamma_mixture,
    gaussian_mixture,
    independent_mixture,
    init,
    isotropic_mixture,
    mixture_of_experts,
    mixture_of_factor_analysers,
    mixture_of_linear_regressions,
    poisson_mixture,
    student_t_mixture,
)
from .scale.chunked import fit_chunked, log_likelihood_chunked
from .scale.online import OnlineResult, fit_online
from .uncertainty import BootstrapResult, bootstrap

__version__ = "0.1.0"

_compile_cache.enable_on_import()
_legacy.install(__name__)


def __getattr__(name):
    return _legacy.attribute(__name__, name)


__all__ = [
    "Annealing", "bayesian_gaussian_mixture", "BayesianGaussianMixture", "bernoulli_mixture",
    "BernoulliMixture", "bootstrap", "BootstrapResult", "categorical_mixture", "CategoricalHMM",
    "CategoricalMixture", "Checkpoint", "ComponentSelection", "confidence_intervals", "constraints",
    "ConvergenceWarning", "disable_compilation_cache", "e_step", "elbo", "EMGradient",
    "empirical_information", "enable_compilation_cache", "expected_log_joint", "exponential_mixture",
    "ExponentialMixture", "fit", "fit_chunked", "fit_many", "fit_online", "FitError", "FitInterrupted",
    "FitResult", "free_compiled_programs", "gamma_mixture", "GammaMixture", "gaussian_mixture",
    "GaussianHMM", "GaussianMixture", "GMMHMM", "hmm", "IllConditionedWarning", "independent_mixture",
    "IndependentMixture", "init", "isotropic_mixture", "KMeans", "LinearAutoregressiveHMM", "load",
    "log_likelihood", "log_likelihood_chunked", "louis_information", "mixture_of_experts",
    "mixture_of_factor_analysers", "mixture_of_linear_regressions", "MixtureOfExperts",
    "MixtureOfFactorAnalysers", "MixtureOfLinearRegressions", "MixtureOfPPCA", "Model", "models",
    "MultinomialHMM", "NotFittedError", "observed_information", "OnlineResult", "poisson_mixture",
    "PoissonHMM", "PoissonMixture", "save", "select_components", "standard_errors", "student_t_mixture",
    "StudentTMixture",
]
