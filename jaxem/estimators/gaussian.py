"""scikit-learn-style Gaussian mixture over :func:`jaxem.fit`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..core import inference as em
from ..core.validation import (
    check_data,
    check_nonnegative_float,
    warn_if_regularisation_dominates,
)
from ..models import gaussian as gaussian_family
from ..models.gaussian_prior import GaussianPrior, gaussian_prior
from .base import MixtureEstimator
from .checks import check_finite_at_least_one, one_of


class GaussianMixture(MixtureEstimator):
    """Gaussian mixture fitted by EM (scikit-learn's ``GaussianMixture`` API).

    Args:
        n_components: number of components ``K``.
        covariance_type: ``"full"`` (``covariances_ [K, D, D]``), ``"diag"`` (``[K, D]``),
            ``"spherical"`` (``[K]``) or ``"tied"`` (``[D, D]``).
        tol: convergence threshold on the relative change of the total log-likelihood.
        reg_covar: non-negative value added to the diagonal of every covariance.
        max_iter: EM iterations per restart.
        n_restarts: random starts, run together as one vmapped program; the best is kept.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        weights_init, means_init, precisions_init: optional starting parameters in
            scikit-learn's shapes; when any is given the fit runs once from them (missing ones
            default to equal weights and the data's variance).
        random_state: ``None``, an int seed, or a JAX key.
        m_step: ``"auto"``/``"closed_form"`` or ``"gradient"`` (optax ascent on Q).
        optimizer: the gradient M-step (default :class:`jaxem.EMGradient`; or an optax transformation).
        e_step: ``"soft"`` (EM), ``"hard"`` (classification EM) or ``"anneal"`` / a
            :class:`jaxem.Annealing` schedule (deterministic annealing); see :func:`jaxem.fit`.
        accelerate: ``"auto"`` (the default: SQUAREM with the soft E-step), ``"squarem"``/``True``
            or ``None``/``False`` (plain EM); see :func:`jaxem.fit`.
        verbose: ``0`` no progress bar, ``1`` one on a terminal for long fits, ``2`` always.
        checkpoint: ``None``, a file name or a :class:`jaxem.Checkpoint`: the fit saves its loop
            state there (every 60 s by default, at the end, on Ctrl-C); resume: continue from
            it (same data and hyperparameters, else ValueError); see :func:`jaxem.fit`.
        weight_concentration: ``α >= 1`` of a symmetric Dirichlet prior on the weights (MAP-EM;
            1 is flat, larger keeps every weight away from 0).
        mean_precision_prior, mean_prior, covariance_prior, degrees_of_freedom_prior: a
            Normal-Wishart prior on means and covariances (Normal-inverse-gamma for diag and
            spherical; see :class:`jaxem.models.GaussianPrior`), used when any of them is set; the
            others then default as in :func:`jaxem.models.gaussian_prior` (``κ0 = 0.01``, the data
            mean, the data's covariance over ``K^(2/D)``, ``ν0 = D + 2``). A MAP fit keeps every
            covariance at least ``Ψ0 / (N_k + ν0 + D + 2)`` even with ``reg_covar=0``, and its
            ``history_`` is the penalised log-likelihood per sample.

    Missing values: NaN entries of ``X`` (not whole NaN rows) are marginalised out exactly, in
    fitting and in inference (a slower variant of the model used only when ``X`` has NaNs).

    Fitted attributes:
        ``weights_ [K]``, ``means_ [K, D]``, ``covariances_``, ``precisions_``,
        ``precisions_cholesky_`` (scikit-learn's upper-triangular convention), ``converged_``,
        ``n_iter_``, ``lower_bound_`` (final mean log-likelihood per sample), ``history_``
        (``[max_iter]`` mean log-likelihood per iteration, NaN after stopping),
        ``fit_result_`` (the full :class:`jaxem.FitResult`, in centred coordinates).
    """

    _parameters = {"n_components": ..., "covariance_type": "full", "tol": ..., "reg_covar": 1e-6,
                   "init_params": ..., "weights_init": None, "means_init": None,
                   "precisions_init": None, "optimizer": ..., "weight_concentration": 1.0,
                   "mean_precision_prior": None, "mean_prior": None, "covariance_prior": None,
                   "degrees_of_freedom_prior": None}
    _input_tags = {"allow_nan": True}  # NaN entries are marginalised out
    _constraints = {"reg_covar": check_nonnegative_float,
                    "covariance_type": one_of(gaussian_family.COVARIANCE_TYPES),
                    "init_params": one_of(gaussian_family.INIT_METHODS),
                    "weight_concentration": check_finite_at_least_one}

    def _validate(self, X, fitting: bool) -> np.ndarray:
        # NaN marks a missing entry; the shared checks run on a copy with the NaNs filled in.
        X = check_data(X, allow_nan=True)
        nan = np.isnan(X)
        self._has_nan = bool(nan.any())
        if not self._has_nan:
            return super()._validate(X, fitting)
        if X.ndim == 2 and nan.all(axis=1).any():
            row = int(np.argmax(nan.all(axis=1)))
            raise ValueError(f"X row {row} is all NaN; every row needs at least one observed "
                             "value (drop the row)")
        super()._validate(np.where(nan, 0.0, X), fitting)
        return X

    def _model(self):
        # A loaded estimator has no _prior (it depends on the training data, and a file holds
        # arrays only); predictions need none, since the prior enters the fit, not the log-joint.
        return gaussian_family.gaussian_mixture(
            self.n_components, self.covariance_type, float(self.reg_covar), self.init_params,
            prior=getattr(self, "_prior", None), missing=self._has_nan)

    def _prepare(self, X: np.ndarray) -> None:
        # Fitting in coordinates centred on the data mean keeps float32 products accurate for
        # data far from the origin; means_ are reported in the user's coordinates.
        self._offset = np.nanmean(X, axis=0)
        self._prior = self._make_prior(X - self._offset)
        warn_if_regularisation_dominates(X, float(self.reg_covar))

    def _make_prior(self, Xc: np.ndarray) -> GaussianPrior | None:
        """The prior in centred coordinates, or ``None`` for maximum likelihood."""
        normal_wishart = (self.mean_precision_prior, self.mean_prior, self.covariance_prior,
                          self.degrees_of_freedom_prior)
        if all(v is None for v in normal_wishart):
            if self.weight_concentration == 1:
                return None
            return GaussianPrior(weight_concentration=float(self.weight_concentration))
        extra = {} if self.mean_precision_prior is None else {
            "mean_precision": check_nonnegative_float(self.mean_precision_prior,
                                                      "mean_precision_prior")}
        return gaussian_prior(Xc, self.n_components, self.covariance_type,
                              weight_concentration=self.weight_concentration,
                              mean=self._centred_mean_prior(),
                              covariance=self.covariance_prior,
                              degrees_of_freedom=self.degrees_of_freedom_prior, **extra)

    def _centred_mean_prior(self) -> np.ndarray | None:
        """``mean_prior`` in the centred coordinates (``None`` when not given)."""
        if self.mean_prior is None:
            return None
        mean = np.asarray(self.mean_prior, dtype=np.float64)
        if mean.shape != self._offset.shape:
            raise ValueError(f"mean_prior must have shape {self._offset.shape} to match X, "
                             f"got {mean.shape}")
        return mean - self._offset

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return X - self._offset

    def _params(self):
        dtype = em.default_float_dtype()
        A = np.asarray(self.precisions_cholesky_)
        if self.covariance_type in ("full", "tied"):
            A = np.swapaxes(A, -1, -2)
        return {"weights": jnp.asarray(self.weights_, dtype),
                "means": jnp.asarray(np.asarray(self.means_) - self._offset, dtype),
                "prec_chol": jnp.asarray(A, dtype)}

    def _set_params_from(self, params) -> None:
        A = np.asarray(params["prec_chol"])
        self.weights_ = np.asarray(params["weights"])
        # In float64: the offset of data far from the origin (timestamps, say) must not swallow the
        # means the fit resolved about it (1.7e9 + 100 and 1.7e9 are the same float32).
        self.means_ = np.asarray(params["means"], np.float64) + np.asarray(self._offset, np.float64)
        self.covariances_ = np.asarray(
            gaussian_family.covariances_from_prec_chol(params["prec_chol"], self.covariance_type))
        if self.covariance_type in ("full", "tied"):
            self.precisions_cholesky_ = np.swapaxes(A, -1, -2)
            self.precisions_ = self.precisions_cholesky_ @ A
        else:
            self.precisions_cholesky_ = A
            self.precisions_ = A * A

    def _fitted_arrays(self, params) -> dict:
        return {"weights_": params["weights"], "means_": params["means"] + self._offset,
                "covariances_": gaussian_family.covariances_from_prec_chol(
                    params["prec_chol"], self.covariance_type)}

    def _initial_params(self, X: np.ndarray):
        if self.weights_init is None and self.means_init is None and self.precisions_init is None:
            return None
        k, d = self.n_components, X.shape[1]
        ct = self.covariance_type
        weights = (np.full(k, 1.0 / k) if self.weights_init is None
                   else np.asarray(self.weights_init, dtype=np.float64))
        means = (np.broadcast_to(self._offset, (k, d)) if self.means_init is None
                 else np.asarray(self.means_init, dtype=np.float64))
        if self.precisions_init is None:
            var = np.nanvar(X, axis=0) + self.reg_covar
            prec = {"full": np.broadcast_to(np.diag(1 / var), (k, d, d)), "tied": np.diag(1 / var),
                    "diag": np.broadcast_to(1 / var, (k, d)),
                    "spherical": np.full(k, 1 / var.mean())}[ct]
        else:
            prec = np.asarray(self.precisions_init, dtype=np.float64)
        expected = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[ct]
        for name, arr, shape in (("weights_init", weights, (k,)), ("means_init", means, (k, d)),
                                 ("precisions_init", prec, expected)):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        if ct in ("full", "tied"):
            # precision Λ = A^T A with A = chol(Λ^{-1})^{-1}, lower triangular.
            cov_chol = np.linalg.cholesky(np.linalg.inv(prec))
            A = np.linalg.inv(cov_chol)
        else:
            A = np.sqrt(prec)
        dtype = em.default_float_dtype()
        return {"weights": jnp.asarray(weights / weights.sum(), dtype),
                "means": jnp.asarray(means - self._offset, dtype),
                "prec_chol": jnp.asarray(A, dtype)}

    def _n_parameters(self) -> int:
        k, d = self.n_components, self.n_features_in_
        cov = {"full": k * d * (d + 1) // 2, "diag": k * d, "tied": d * (d + 1) // 2,
               "spherical": k}[self.covariance_type]
        return cov + k * d + k - 1

    def _sample_rows(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k, d = self.n_components, self.n_features_in_
        cov = np.asarray(self.covariances_, dtype=np.float64)
        cov = {"full": cov, "tied": np.broadcast_to(cov, (k, d, d)),
               "diag": cov[:, :, None] * np.eye(d), "spherical": cov[:, None, None] * np.eye(d)
               }[self.covariance_type]
        return _shifted(self.means_, np.linalg.cholesky(cov), labels,
                        rng.standard_normal((len(labels), d)))


def _shifted(means, chol: np.ndarray, labels: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``means[labels] + chol[labels] @ z`` row by row: ``z`` scaled into each drawn component."""
    return np.asarray(means, np.float64)[labels] + np.einsum("nij,nj->ni", chol[labels], z)
