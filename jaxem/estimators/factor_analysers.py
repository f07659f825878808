"""scikit-learn-style mixtures of factor analysers and of probabilistic PCA over :func:`jaxem.fit`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..core import inference as em
from ..core.validation import check_nonnegative_float, check_positive_int, to_device
from ..models import factor_analysers as family
from ..models import init as initialisers
from .base import CentredCoordinates, MixtureEstimator
from .checks import one_of


def _check_bool(value, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")


class MixtureOfFactorAnalysers(CentredCoordinates, MixtureEstimator):
    """Mixture of factor analysers fitted by EM (Ghahramani & Hinton 1996).

    Each component is a Gaussian with covariance ``W_k W_k^T + Ψ_k``: ``n_factors`` loadings
    ``W_k [D, q]`` and a diagonal noise ``Ψ_k`` (with ``isotropic=True``, ``σ_k² I``: a mixture of
    probabilistic PCA, Tipping & Bishop 1999). Nothing ``D x D`` is formed: an iteration costs
    ``O(N K D q)``, so it suits data such as 70k x 784 images where a full covariance per
    component is too many parameters and a diagonal one ignores all correlation. The model's
    statistics are moments about the origin, so it fits in coordinates centred on the data mean.

    Args:
        n_components: ``K``.
        n_factors: ``q < D``.
        isotropic: probabilistic PCA noise ``σ_k² I`` instead of a diagonal ``Ψ_k``.
        tol, max_iter, n_restarts, init_params, random_state, m_step, optimizer, e_step,
            verbose: as for :class:`jaxem.GaussianMixture`.
        reg_covar: added to every noise variance in the M-step.

    Fitted attributes:
        ``weights_ [K]``, ``means_ [K, D]``, ``loadings_ [K, D, q]``, ``noise_variance_``
        (``[K, D]``, or ``[K]`` when isotropic), ``converged_``, ``n_iter_``, ``lower_bound_``
        (final mean log-likelihood per sample), ``history_``.
    """

    _parameters = {"n_components": ..., "n_factors": 2, "isotropic": False, "tol": ...,
                   "reg_covar": 1e-6, "init_params": ...}
    _constraints = {"n_factors": check_positive_int, "isotropic": _check_bool,
                    "reg_covar": check_nonnegative_float,
                    "init_params": one_of(initialisers.INIT_METHODS)}

    def _model(self):
        return family.mixture_of_factor_analysers(self.n_components, self.n_factors,
                                                  bool(self.isotropic), float(self.reg_covar),
                                                  self.init_params)

    def _check_values(self, X: np.ndarray) -> None:
        if X.shape[1] <= self.n_factors:
            raise ValueError(f"n_factors={self.n_factors} needs more than {self.n_factors} "
                             f"features, got {X.shape[1]}; lower n_factors")

    def _params(self):
        dtype = em.default_float_dtype()
        return {"weights": jnp.asarray(self.weights_, dtype),
                "means": jnp.asarray(np.asarray(self.means_) - self._offset, dtype),
                "loadings": jnp.asarray(self.loadings_, dtype),
                "noise": jnp.asarray(self.noise_variance_, dtype)}

    def _set_params_from(self, params) -> None:
        self.weights_ = np.asarray(params["weights"])
        self.means_ = np.asarray(params["means"], np.float64) + np.asarray(self._offset, np.float64)
        self.loadings_ = np.asarray(params["loadings"])
        self.noise_variance_ = np.asarray(params["noise"])

    def get_covariance(self) -> np.ndarray:
        """``[K, D, D]`` each component's covariance ``W_k W_k^T + Ψ_k`` (dense: small ``D``)."""
        self._check_fitted()
        return np.asarray(family.covariances(self._params()))

    def transform(self, X) -> np.ndarray:
        """Each row's expected factors ``E[z | x, k] [N, q]`` under its most probable component
        ``k`` (factors of different components live in different subspaces, so they are not
        averaged over components)."""
        self._check_fitted()
        X = self._transform(self._validate(X, fitting=False))
        factors, log_joint = family.expected_factors(self._params(), to_device(X))
        best = np.argmax(np.asarray(log_joint), axis=1)
        return np.asarray(factors)[np.arange(X.shape[0]), best]

    def _n_parameters(self) -> int:
        k, d, q = self.n_components, self.n_features_in_, self.n_factors
        noise = k if self.isotropic else k * d
        return (k - 1) + k * d + family.Loadings.n_free((k, d, q)) + noise

    def _sample_rows(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        W = np.asarray(self.loadings_, np.float64)[labels]
        noise = np.asarray(self.noise_variance_, np.float64)[labels]
        if noise.ndim == 1:
            noise = noise[:, None]
        z = rng.standard_normal((len(labels), W.shape[2]))
        eps = rng.standard_normal((len(labels), W.shape[1])) * np.sqrt(noise)
        return np.asarray(self.means_, np.float64)[labels] + np.einsum("ndq,nq->nd", W, z) + eps


class MixtureOfPPCA(MixtureOfFactorAnalysers):
    """Mixture of probabilistic PCA (Tipping & Bishop 1999): :class:`MixtureOfFactorAnalysers`
    with ``isotropic=True`` (noise ``σ_k² I``; ``noise_variance_ [K]``)."""

    _parameters = {"isotropic": True}
