"""scikit-learn-style variational Bayesian Gaussian mixture over :func:`jaxem.fit`."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ..models import bayesian_gaussian as family
from ..models.gaussian_prior import GaussianPrior
from .checks import one_of
from .gaussian import GaussianMixture


class BayesianGaussianMixture(GaussianMixture):
    """Gaussian mixture fitted by variational Bayes EM (scikit-learn's ``BayesianGaussianMixture``).

    The E-step is the softmax of each row's expected log-joint under the variational posterior;
    the M-step is the closed-form posterior update; ``history_`` is the evidence lower bound
    (ELBO) per sample, with every constant term, after each iteration's E-step. Components the
    data do not support are driven to near-zero ``weights_``.

    Args:
        n_components: the largest number of components ``K``.
        covariance_type: ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"`` (scikit-learn's
            meaning: a Wishart posterior with a full, diagonal, isotropic or shared scale).
        weight_concentration_prior_type: ``"dirichlet_process"`` (stick-breaking, default) or
            ``"dirichlet_distribution"``.
        weight_concentration_prior: ``γ0 > 0`` (default ``1 / K``).
        mean_precision_prior: ``β0 > 0`` (default 1); mean_prior: ``m0 [D]`` (default the data
            mean); degrees_of_freedom_prior: ``ν0 > D - 1`` (default ``D``);
        covariance_prior: the Wishart's inverse scale, ``[D, D]`` (full, tied), ``[D]`` (diag)
            or a float (spherical); default the data's covariance, variances or mean variance.
        reg_covar: added to each component's scatter per unit weight (scikit-learn's rule).
        tol, max_iter, n_restarts, init_params, random_state, verbose: as for
            :class:`jaxem.GaussianMixture` (``tol`` is relative to the bound).

    Fitted attributes (scikit-learn's): ``weights_`` (``E_q[π]``), ``weight_concentration_``
    (``[K]``, or the sticks' ``(a [K], b [K])``), ``mean_precision_ [K]``, ``means_ [K, D]``,
    ``degrees_of_freedom_`` (``[K]``; tied: a float), ``covariances_`` (``W_k^{-1} / ν_k``),
    ``precisions_``, ``precisions_cholesky_``, ``converged_``, ``n_iter_``, ``lower_bound_``
    (final ELBO per sample; scikit-learn reports a total without its constant terms, computed
    before the last E-step), ``history_``.

    ``score_samples`` is each row's ``logsumexp_k ℓ_nk`` (the row's part of the bound), as in
    scikit-learn. ``bic`` and ``aic`` are not defined for a variational fit.
    """

    _parameters = {"n_components": ..., "covariance_type": "full", "tol": ..., "reg_covar": 1e-6,
                   "init_params": ..., "weight_concentration_prior_type": "dirichlet_process",
                   "weight_concentration_prior": None, "mean_precision_prior": None,
                   "mean_prior": None, "degrees_of_freedom_prior": None, "covariance_prior": None}
    _inherit_parameters = False
    _constraints = {"weight_concentration_prior_type": one_of(family.PRIOR_TYPES)}

    @classmethod
    def _own_parameters(cls) -> dict:
        # GaussianMixture's MAP-prior and starting-point hyperparameters are not this model's.
        base = {k: v for k, v in GaussianMixture._defaults.items()
                if k not in ("weights_init", "means_init", "precisions_init",
                             "weight_concentration")}
        own = {k: v for k, v in cls.__dict__["_parameters"].items() if v is not ...}
        return {**base, **own}

    def _validate(self, X, fitting: bool) -> np.ndarray:
        X = super()._validate(X, fitting)
        if self._has_nan:
            raise ValueError(f"{type(self).__name__} does not accept NaN entries; impute them or "
                             "use GaussianMixture, which marginalises missing values")
        return X

    def _model(self):
        # The prior is kept as a dict of floats and tuples, which a model file can hold.
        return family.bayesian_gaussian_mixture(
            self.n_components, GaussianPrior(**self._prior), self.covariance_type,
            self.weight_concentration_prior_type, float(self.reg_covar), self.init_params)

    def _make_prior(self, Xc: np.ndarray):
        return family.variational_prior(
            Xc, self.n_components, self.covariance_type,
            weight_concentration=self.weight_concentration_prior,
            mean_precision=self.mean_precision_prior, mean=self._centred_mean_prior(),
            covariance=self.covariance_prior, degrees_of_freedom=self.degrees_of_freedom_prior)

    def _prepare(self, X: np.ndarray) -> None:
        self._offset = X.mean(axis=0)
        self._prior = dataclasses.asdict(self._make_prior(X - self._offset))

    def _initial_params(self, X: np.ndarray):
        return None

    def _params(self):
        # GaussianMixture's means and precision factors, with the posterior's other parameters.
        params = super()._params()
        del params["weights"]
        dtype = params["means"].dtype
        return {**params, "concentration": jnp.asarray(np.asarray(self.weight_concentration_), dtype),
                "mean_precision": jnp.asarray(self.mean_precision_, dtype),
                "dof": jnp.asarray(self.degrees_of_freedom_, dtype)}

    def _set_params_from(self, params) -> None:
        weights = family.expected_weights(params["concentration"],
                                          self.weight_concentration_prior_type)
        super()._set_params_from({"weights": weights, "means": params["means"],
                                  "prec_chol": params["prec_chol"]})
        concentration = np.asarray(params["concentration"])
        self.weight_concentration_ = (tuple(concentration) if concentration.ndim == 2
                                      else concentration)
        self.mean_precision_ = np.asarray(params["mean_precision"])
        dof = np.asarray(params["dof"])
        self.degrees_of_freedom_ = float(dof) if dof.ndim == 0 else dof

    def _n_parameters(self) -> int:
        raise ValueError(f"{type(self).__name__} has no BIC or AIC (its parameters are a "
                         "posterior, not a point estimate); compare fits by lower_bound_")
