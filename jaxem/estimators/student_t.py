"""scikit-learn-style Student-t mixture over :func:`jaxem.fit`."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ..core import inference as em
from ..core.validation import check_nonnegative_float
from ..models import gaussian as gaussian_family
from ..models import student_t as t_family
from .base import MixtureEstimator
from .checks import check_concentration, one_of
from .gaussian import _shifted


def _check_dof(value, name: str) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                  and value > 0):
        raise ValueError(f"{name} must be a positive number or None (estimated), got {value!r}")


class StudentTMixture(MixtureEstimator):
    """Mixture of multivariate Student-t distributions (robust clustering), fitted by ECM.

    Args:
        n_components: number of components ``K``.
        covariance_type: ``"full"`` (scale matrices ``[K, D, D]``) or ``"diag"`` (``[K, D]``).
        dof: fixed degrees of freedom ``ν`` for every component, or ``None`` to estimate one per
            component.
        tol, reg_covar, max_iter, n_restarts, random_state, m_step, optimizer, e_step, accelerate,
            verbose: as in :class:`GaussianMixture`.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights (MAP when > 1).

    Fitted attributes:
        ``weights_ [K]``, ``means_ [K, D]``, ``covariances_`` (the scale matrices ``Σ_k``; the
        covariance of component ``k`` is ``ν/(ν-2) Σ_k`` for ``ν > 2``), ``dofs_ [K]``,
        ``converged_``, ``n_iter_``, ``lower_bound_``, ``history_``, ``fit_result_``.
    """

    _parameters = {"n_components": ..., "covariance_type": "full", "dof": None, "tol": ...,
                   "reg_covar": 1e-6, "init_params": ..., "dirichlet_alpha": 1.0}
    _constraints = {"reg_covar": check_nonnegative_float,
                    "covariance_type": one_of(t_family.COVARIANCE_TYPES), "dof": _check_dof,
                    "init_params": one_of(t_family.INIT_METHODS),
                    "dirichlet_alpha": check_concentration}

    def _model(self):
        dof = None if self.dof is None else float(self.dof)
        return t_family.student_t_mixture(self.n_components, self.covariance_type, dof,
                                          float(self.reg_covar), self.init_params,
                                          float(self.dirichlet_alpha))

    def _prepare(self, X: np.ndarray) -> None:
        # Centred coordinates keep float32 products accurate far from the origin.
        self._offset = X.mean(axis=0)

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return X - self._offset

    def _params(self):
        dtype = em.default_float_dtype()
        cov = np.asarray(self.covariances_, np.float64)
        if self.covariance_type == "full":
            A = np.linalg.inv(np.linalg.cholesky(cov))
        else:
            A = 1.0 / np.sqrt(cov)
        return {"weights": jnp.asarray(self.weights_, dtype),
                "means": jnp.asarray(np.asarray(self.means_) - self._offset, dtype),
                "prec_chol": jnp.asarray(A, dtype), "dofs": jnp.asarray(self.dofs_, dtype)}

    def _set_params_from(self, params) -> None:
        self.weights_ = np.asarray(params["weights"])
        # In float64: the offset of data far from the origin (timestamps, say) must not swallow the
        # means the fit resolved about it (1.7e9 + 100 and 1.7e9 are the same float32).
        self.means_ = np.asarray(params["means"], np.float64) + np.asarray(self._offset, np.float64)
        ct = "full" if self.covariance_type == "full" else "diag"
        self.covariances_ = np.asarray(
            gaussian_family.covariances_from_prec_chol(params["prec_chol"], ct))
        self.dofs_ = np.asarray(params["dofs"])

    def _n_parameters(self) -> int:
        k, d = self.n_components, self.n_features_in_
        scale = k * d * (d + 1) // 2 if self.covariance_type == "full" else k * d
        return scale + k * d + k - 1 + (k if self.dof is None else 0)

    def _sample_rows(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # x = μ + L z / sqrt(u) with u ~ Gamma(ν/2, rate ν/2): a Gaussian scale mixture.
        d = self.n_features_in_
        cov = np.asarray(self.covariances_, np.float64)
        if self.covariance_type == "diag":
            cov = cov[:, :, None] * np.eye(d)
        chol = np.linalg.cholesky(cov)
        nu = np.asarray(self.dofs_, np.float64)[labels]
        u = rng.gamma(nu / 2, 2 / nu)
        z = rng.standard_normal((len(labels), d)) / np.sqrt(u)[:, None]
        return _shifted(self.means_, chol, labels, z)
