"""Hidden Markov models: the mixture contract with a Markov chain over the latent states.

An :class:`HMM` is an emission ``log_emission(params, x) -> [K]`` for one observation plus an
initial distribution and a transition matrix. :func:`fit` runs Baum-Welch over many sequences and
restarts in one compiled program; :mod:`jaxem.hmm.inference` has forward-backward (``lax.scan``
and ``lax.associative_scan``) and Viterbi for one sequence.
"""

from .autoregressive import autoregressive_hmm, lagged_rows, sample_autoregressive
from .baum_welch import decode, fit, posterior, sample
from .emissions import categorical_hmm, gaussian_hmm, multinomial_hmm, poisson_hmm
from .inference import Posterior, forward_backward, viterbi
from .information import hmm_likelihood
from .mixture_emission import gmm_hmm, mixture_emission
from .model import HMM

__all__ = ["CategoricalHMM", "GMMHMM", "GaussianHMM", "HMM", "LinearAutoregressiveHMM",
           "MultinomialHMM", "PoissonHMM", "Posterior", "autoregressive_hmm", "categorical_hmm",
           "decode", "fit", "forward_backward", "gaussian_hmm", "gmm_hmm", "hmm_likelihood",
           "lagged_rows", "mixture_emission", "multinomial_hmm", "poisson_hmm", "posterior",
           "sample", "sample_autoregressive", "viterbi"]

# The hmmlearn-style estimators live with the other estimators (a layer above this one); they are
# re-exported here on first use, so that importing the functional HMM does not import them.
_ESTIMATORS = ("CategoricalHMM", "GaussianHMM", "PoissonHMM")
_MORE_ESTIMATORS = ("GMMHMM", "LinearAutoregressiveHMM", "MultinomialHMM")


def __getattr__(name):
    if name in _ESTIMATORS:
        from ..estimators import hmm as estimators

        return getattr(estimators, name)
    if name in _MORE_ESTIMATORS:
        from ..estimators import hmm_families

        return getattr(hmm_families, name)
    raise AttributeError(f"module 'jaxem.hmm' has no attribute {name!r}")
