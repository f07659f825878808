"""Hidden Markov models: the mixture contract with a Markov chain over the latent states.

An :class:`HMM` is an emission ``log_emission(params, x) -> [K]`` for one observation plus an
initial distribution and a transition matrix. :func:`fit` runs Baum-Welch over many sequences and
restarts in one compiled program; :mod:`jaxem.hmm.inference` has forward-backward (``lax.scan``
and ``lax.associative_scan``) and Viterbi for one sequence.
"""

from .emissions import categorical_hmm, gaussian_hmm, poisson_hmm
from .estimators import CategoricalHMM, GaussianHMM, PoissonHMM
from .fit import decode, fit, posterior, sample
from .inference import Posterior, forward_backward, viterbi
from .model import HMM

__all__ = ["CategoricalHMM", "GaussianHMM", "HMM", "PoissonHMM", "Posterior", "categorical_hmm",
           "decode", "fit", "forward_backward", "gaussian_hmm", "poisson_hmm", "posterior",
           "sample", "viterbi"]
