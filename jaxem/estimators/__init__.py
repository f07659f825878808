"""scikit-learn-style estimators: ``fit`` returns ``self``, fitted attributes end in ``_``.

The estimators hold hyperparameters and fitted arrays only; all computation is the functional
engine's (:func:`jaxem.fit`).
"""

from ._base import MixtureEstimator
from .bernoulli import BernoulliMixture
from .categorical import CategoricalMixture
from .exponential import ExponentialMixture
from .gamma import GammaMixture
from .gaussian import GaussianMixture
from .independent import IndependentMixture
from .kmeans import KMeans
from .poisson import PoissonMixture
from .regression import MixtureOfExperts, MixtureOfLinearRegressions
from .student_t import StudentTMixture

__all__ = ["BernoulliMixture", "CategoricalMixture", "ExponentialMixture", "GammaMixture",
           "GaussianMixture", "IndependentMixture", "KMeans", "MixtureEstimator", "PoissonMixture",
           "StudentTMixture", "MixtureOfExperts", "MixtureOfLinearRegressions"]
