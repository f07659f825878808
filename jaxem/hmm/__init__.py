"""Hidden Markov models: the mixture contract with a Markov chain over the latent states.

An :class:`HMM` is an emission ``log_emission(params, x) -> [K]`` for one observation plus an
initial distribution and a transition matrix. :func:`fit` runs Baum-Welch over many sequences and
restarts in one compiled program; :mod:`jaxem.hmm.inference` has forward-backward (``lax.scan``
and ``lax.associative_scan``) and Viterbi for one sequence.
"""

from .baum_welch import decode, fit, posterior, sample
from .emissions import categorical_hmm, gaussian_hmm, poisson_hmm
from .inference import Posterior, forward_backward, viterbi
from .information import hmm_likelihood
from .model import HMM

__all__ = ["CategoricalHMM", "GaussianHMM", "HMM", "PoissonHMM", "Posterior", "categorical_hmm",
           "decode", "fit", "forward_backward", "gaussian_hmm", "hmm_likelihood", "poisson_hmm",
           "posterior",
           "sample", "viterbi"]

# The hmmlearn-style estimators live with the other estimators (a layer above this one); they are
# re-exported here on first use, so that importing the functional HMM does not import them.
_ESTIMATORS = ("CategoricalHMM", "GaussianHMM", "PoissonHMM")


def __getattr__(name):
    if name in _ESTIMATORS:
        from ..estimators import hmm as estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'jaxem.hmm' has no attribute {name!r}")
