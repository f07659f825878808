"""scikit-learn-style estimators: ``fit`` returns ``self``, fitted attributes end in ``_``.

The estimators hold hyperparameters and fitted arrays only; all computation is the functional
engine's (:func:`jaxem.fit`).
"""

from ._base import MixtureEstimator
from .bernoulli import BernoulliMixture
from .gaussian import GaussianMixture

__all__ = ["BernoulliMixture", "GaussianMixture", "MixtureEstimator"]
