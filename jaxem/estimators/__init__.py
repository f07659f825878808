"""scikit-learn-style estimators: ``fit`` returns ``self``, fitted attributes end in ``_``.

The estimators hold hyperparameters and fitted arrays only; all computation is the functional
engine's (:func:`jaxem.fit`).
"""

from .base import MixtureEstimator
from .bayesian_gaussian import BayesianGaussianMixture
from .bernoulli import BernoulliMixture
from .categorical import CategoricalMixture
from .exponential import ExponentialMixture
from .factor_analysers import MixtureOfFactorAnalysers, MixtureOfPPCA
from .gamma import GammaMixture
from .gaussian import GaussianMixture
from .hmm import CategoricalHMM, GaussianHMM, PoissonHMM
from .hmm_families import GMMHMM, LinearAutoregressiveHMM, MultinomialHMM
from .independent import IndependentMixture
from .kmeans import KMeans
from .poisson import PoissonMixture
from .regression import MixtureOfExperts, MixtureOfLinearRegressions
from .student_t import StudentTMixture

__all__ = [
    "BayesianGaussianMixture",
    "BernoulliMixture",
    "CategoricalHMM",
    "CategoricalMixture",
    "ExponentialMixture",
    "GMMHMM",
    "GammaMixture",
    "GaussianHMM",
    "GaussianMixture",
    "IndependentMixture",
    "KMeans",
    "LinearAutoregressiveHMM",
    "MixtureEstimator",
    "MixtureOfExperts",
    "MixtureOfFactorAnalysers",
    "MixtureOfLinearRegressions",
    "MixtureOfPPCA",
    "MultinomialHMM",
    "PoissonHMM",
    "PoissonMixture",
    "StudentTMixture",
]
