"""scikit-learn-style Student-t mixture over :func:`jaxem.fit`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import em
from ..models import gaussian as gaussian_family
from ..models import student_t as t_family
from ..validation import check_nonnegative_float, check_positive_int
from ._base import MixtureEstimator


class StudentTMixture(MixtureEstimator):
    """Mixture of multivariate Student-t distributions (robust clustering), fitted by ECM.

    Args:
        n_components: number of components ``K``.
        covariance_type: ``"full"`` (scale matrices ``[K, D, D]``) or ``"diag"`` (``[K, D]``).
        dof: fixed degrees of freedom ``ν`` for every component, or ``None`` to estimate one per
            component.
        tol, reg_covar, max_iter, n_restarts, random_state, m_step, optimizer, e_step, verbose: as in
            :class:`GaussianMixture`.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights (MAP when > 1).

    Fitted attributes:
        ``weights_ [K]``, ``means_ [K, D]``, ``covariances_`` (the scale matrices ``Σ_k``; the
        covariance of component ``k`` is ``ν/(ν-2) Σ_k`` for ``ν > 2``), ``dofs_ [K]``,
        ``converged_``, ``n_iter_``, ``lower_bound_``, ``history_``, ``fit_result_``.
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full", dof=None,
                 tol: float = 1e-6, reg_covar: float = 1e-6, max_iter: int = 100,
                 n_restarts: int = 1, init_params: str = "kmeans", dirichlet_alpha: float = 1.0,
                 random_state=None, m_step: str = "auto", optimizer=None,
                 e_step="soft", verbose: int = 0):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.dof = dof
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.init_params = init_params
        self.dirichlet_alpha = dirichlet_alpha
        self.random_state = random_state
        self.m_step = m_step
        self.optimizer = optimizer
        self.e_step = e_step
        self.verbose = verbose

    def _check_hyperparameters(self) -> None:
        super()._check_hyperparameters()
        check_nonnegative_float(self.reg_covar, "reg_covar")
        # The factory names any bad covariance_type, init_params, dof or dirichlet_alpha.
        self._model()

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
        self.means_ = np.asarray(params["means"]) + self._offset.astype(self.weights_.dtype)
        ct = "full" if self.covariance_type == "full" else "diag"
        self.covariances_ = np.asarray(
            gaussian_family.covariances_from_prec_chol(params["prec_chol"], ct))
        self.dofs_ = np.asarray(params["dofs"])

    def _n_parameters(self) -> int:
        k, d = self.n_components, self.n_features_in_
        scale = k * d * (d + 1) // 2 if self.covariance_type == "full" else k * d
        return scale + k * d + k - 1 + (k if self.dof is None else 0)

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows: ``x = μ + L z / sqrt(u)``, ``u ~ Gamma(ν/2, rate ν/2)``.

        Returns:
            ``(X [n_samples, D], labels [n_samples])``.
        """
        self._check_fitted()
        n_samples = check_positive_int(n_samples, "n_samples")
        rng = np.random.default_rng(random_state)
        labels = self._sample_components(n_samples, rng)
        d = self.n_features_in_
        cov = np.asarray(self.covariances_, np.float64)
        if self.covariance_type == "diag":
            cov = cov[:, :, None] * np.eye(d)
        chol = np.linalg.cholesky(cov)
        nu = np.asarray(self.dofs_, np.float64)[labels]
        u = rng.gamma(nu / 2, 2 / nu)
        z = rng.standard_normal((n_samples, d)) / np.sqrt(u)[:, None]
        X = np.asarray(self.means_, np.float64)[labels] + np.einsum("nij,nj->ni", chol[labels], z)
        return X, labels
