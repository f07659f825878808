"""Gaussian mixtures with full, diagonal, spherical and tied covariances.

Parameters (a dict):
    ``weights``    ``[K]`` mixing weights.
    ``means``      ``[K, D]``.
    ``prec_chol``  the Cholesky factor of the precision, as the lower-triangular ``A = L^{-1}`` where
                   ``Σ = L L^T``, so ``(x - μ)^T Σ^{-1} (x - μ) = |A (x - μ)|^2``:
                   full ``[K, D, D]``; tied ``[D, D]``; diag ``[K, D]`` (``1/σ``); spherical ``[K]``.

Sufficient statistics are moments about each component's previous mean ``m_k``
(``Σ_n r_nk (x_n - m_k)``, ``Σ_n r_nk (x_n - m_k)(x_n - m_k)^T``): additive over rows, computed as
batched matrix products, and without the float32 cancellation of moments about a common point.

Variants, chosen when the model is built so the plain fast path is untouched:
    MAP-EM (``prior=``, :mod:`jaxem.models.gaussian_prior`): the same statistics, and an M-step
        that is the mode of likelihood x prior; the model carries ``log_prior``.
    Missing values (``missing=True``, :mod:`jaxem.models._gaussian_missing`): NaN entries are
        marginalised exactly; the statistics are the expected complete-data ones (conditional
        means of the missing coordinates, conditional covariances added to the second moment),
        in the same layout, so the M-step is shared.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..core import blocks, linalg
from ..core import constraints as C
from ..core.model import Model, model_factory
from ..core.validation import check_nonnegative_float, check_positive_int
from . import _gaussian_missing as missing_values
from . import _shifted
from . import init as initialisers
from .common import centred_moments, empty_components, mixing_weights
from .gaussian_prior import GaussianPrior, check_prior, log_prior, prior_constants

Array = jax.Array

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


def _log_normaliser(prec_chol: Array, covariance_type: str, n_features: int) -> Array:
    """``[K]`` (or scalar for tied) ``log det A - D/2 log 2π``."""
    if covariance_type in ("full", "tied"):
        log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
    elif covariance_type == "diag":
        log_det = jnp.sum(jnp.log(prec_chol), axis=-1)
    else:
        log_det = n_features * jnp.log(prec_chol)
    return log_det - 0.5 * n_features * math.log(2 * math.pi)


def _mahalanobis(params, X: Array, covariance_type: str) -> Array:
    """``[N, K]`` squared Mahalanobis distances.

    Full and tied whiten first and square last: ``|A x - A μ|^2``. Expanding the square
    (``x'Λx - 2x'Λμ + μ'Λμ``) would be a few flops cheaper but loses ``eps * (|x|/σ)^2`` to
    cancellation, which in float32 ruins the likelihood of clusters far from the origin. Diagonal
    and spherical precisions take each row about its nearest mean first (:mod:`._shifted`), which
    keeps the expanded form's matrix products without that cancellation. With few features
    (``DIRECT_MAX_FEATURES``) every type takes ``x - μ`` as it is (:func:`_direct_distances`).
    """
    means, A = params["means"], params["prec_chol"]
    n, d = X.shape
    k = means.shape[0]
    if d <= DIRECT_MAX_FEATURES[covariance_type]:
        return _direct_distances(params, X, covariance_type)
    if covariance_type == "full":
        # One [D, K*D] product for every component: y_nk = A_k x_n - A_k μ_k.
        W = A.transpose(2, 0, 1).reshape(d, k * d)
        y = X @ W - jnp.einsum("kd,ked->ke", means, A).reshape(k * d)
        # Σ_e y_nke² as a product with the [K*D, K] block of ones: XLA's CPU reductions along a
        # short minor axis cost more than this product.
        return (y * y) @ jnp.repeat(jnp.eye(k, dtype=y.dtype), d, axis=0)
    elif covariance_type == "tied":
        y = (X @ A.T)[:, None, :] - (means @ A.T)[None]
    else:
        return _diagonal_distances(params, _shift(params, X))
    return jnp.sum(y * y, axis=-1)


# Up to this many features the distances take x - μ_k as it is, one feature at a time: matrix
# products over so few features run far below XLA:CPU's product speed (the diagonal types' eleven
# in particular), and the [N, K] terms fuse into one pass. The gain shrinks as features grow
# (the diagonal types still gain a little at 4). Full and tied covariances gain only at 1: at 2
# and 3 their D² terms cost as much as the one whitening product they replace.
DIRECT_MAX_FEATURES = {"full": 1, "tied": 1, "diag": 4, "spherical": 4}


def _direct_distances(params, X: Array, covariance_type: str) -> Array:
    """``[N, K]`` ``|A_k (x - μ_k)|²`` for few features, summed term by term: ``x - μ_k`` is
    formed first, so nothing cancels."""
    means, A = params["means"], params["prec_chol"]
    d = X.shape[1]
    diffs = [X[:, j:j + 1] - means[:, j] for j in range(d)]         # each [N, K]
    if covariance_type in ("full", "tied"):
        # A [K, D, D] (or [D, D] shared): row e of A_k (x - μ_k).
        whitened = [sum(A[..., e, j] * diffs[j] for j in range(d)) for e in range(d)]
        return sum(w * w for w in whitened)
    precision = _diagonal_precision(A, means)
    return sum(precision[:, j] * diffs[j] * diffs[j] for j in range(d))


def _shift(params, X: Array) -> _shifted.Shifted:
    """Rows about their nearest mean (diagonal and spherical types)."""
    return _shifted.shift_to_nearest(X, params["means"])


def _diagonal_distances(params, shifted: _shifted.Shifted) -> Array:
    means = params["means"]
    return _shifted.squared_distances(shifted, means,
                                      _diagonal_precision(params["prec_chol"], means))


def _diagonal_precision(A: Array, means: Array) -> Array:
    """``[K, D]`` per-coordinate precisions ``1/σ²`` from diag ``[K, D]`` or spherical ``[K]``."""
    A = A if A.ndim == 2 else jnp.broadcast_to(A[:, None], means.shape)
    return A * A


def _batch_log_joint(params, X: Array, covariance_type: str) -> Array:
    return _log_joint_from(params, X.shape[1], covariance_type,
                           _mahalanobis(params, X, covariance_type))


def _log_joint_from(params, d: int, covariance_type: str, distances: Array) -> Array:
    norm = _log_normaliser(params["prec_chol"], covariance_type, d)
    return jnp.log(params["weights"]) + norm - 0.5 * distances


def _log_joint(params, x: Array, covariance_type: str) -> Array:
    # The one-observation contract is the batched form on a batch of one: one formula to trust.
    return _batch_log_joint(params, x[None], covariance_type)[0]


def _suff_stats(params, X: Array, resp: Array, covariance_type: str):
    # Moments about each component's previous mean: additive over rows (the means are fixed
    # during a pass) and accurate in float32 even for clusters many standard deviations from the
    # origin, where moments about one common point lose the variance to cancellation.
    # centred_moments turns the sums into K batched matrix products; diagonal types with more
    # than a few features get the same moments from products over rows taken about their nearest
    # mean.
    means = params["means"]
    if covariance_type in ("full", "tied"):
        first, second = centred_moments(X, means, resp)
    elif X.shape[1] <= DIRECT_MAX_FEATURES[covariance_type]:
        first, second = centred_moments(X, means, resp, full=False)
    else:
        return _diagonal_stats(params, _shift(params, X), resp)
    return {"nk": jnp.sum(resp, axis=0), "first": first, "second": second}


def _diagonal_stats(params, shifted: _shifted.Shifted, resp: Array):
    nk, first, second = _shifted.moments(shifted, params["means"], resp)
    return {"nk": nk, "first": first, "second": second}


def _diagonal_block_stats(params, X: Array, posterior, covariance_type: str):
    if X.shape[1] <= DIRECT_MAX_FEATURES[covariance_type]:
        row_objectives, resp = posterior(_batch_log_joint(params, X, covariance_type))
        return row_objectives, _suff_stats(params, X, resp, covariance_type)
    # The log-joint and the statistics share one shift of the rows: XLA does not merge two
    # computations of it, and the second would be a sizeable share of the pass.
    shifted = _shift(params, X)
    distances = _diagonal_distances(params, shifted)
    row_objectives, resp = posterior(_log_joint_from(params, X.shape[1], covariance_type,
                                                     distances))
    return row_objectives, _diagonal_stats(params, shifted, resp)


def _precision_cholesky(cov: Array) -> Array:
    """``A = L^{-1}`` for ``cov = L L^T`` (batched over leading axes)."""
    L = linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    return linalg.solve_triangular(L, eye, lower=True)


def _maximize(stats, params, covariance_type: str, reg_covar: float, prior=None, constants=None):
    """Closed-form M-step: maximum likelihood, or the posterior mode under ``prior``.

    With a Normal-Wishart prior (mean ``m0``, mean precision ``κ0``, scale ``Ψ0``, degrees of
    freedom ``ν0``) the mean is ``(N_k x̄_k + κ0 m0) / (N_k + κ0)`` and the covariance
    ``(Ψ0 + S_k + κ0 N_k / (κ0 + N_k) (x̄_k - m0)(x̄_k - m0)^T) / (N_k + extra)`` with ``S_k`` the
    scatter about ``x̄_k``; ``Ψ0 = κ0 = extra = 0`` is maximum likelihood. ``constants``, when
    given, is ``(Ψ0, κ0, m0, extra)`` itself (hmmlearn's regularisation, say) in place of a prior.
    """
    nk = stats["nk"]
    empty, safe_nk = empty_components(nk)
    old = params["means"]
    k, d = old.shape
    psi, kappa, m0, extra = (prior_constants(prior, covariance_type, d, k) if constants is None
                             else constants)
    offset = stats["first"] / safe_nk[:, None]                  # x̄_k - m_k
    # κ0 is one number, or one per component ([K], hmmlearn's means_weight).
    means = old + (stats["first"] + jnp.asarray(kappa)[..., None] * (m0 - old)) / (
        safe_nk + kappa)[:, None]
    dev = old + offset - m0                                      # x̄_k - m0
    shrink = kappa * nk / (kappa + safe_nk)
    # Without a prior an empty component keeps its parameters (its weight goes to ~0); with one,
    # the prior's mode is well defined and is the exact M-step.
    regularised = constants is not None or (prior is not None and prior.covariance is not None)
    keep = jnp.zeros_like(empty) if regularised else empty
    if covariance_type in ("full", "tied"):
        scatter = (stats["second"] - stats["first"][:, :, None] * offset[:, None, :]
                   + shrink[:, None, None] * dev[:, :, None] * dev[:, None, :])
        if covariance_type == "full":
            cov = (psi + scatter) / (safe_nk + extra)[:, None, None]
        else:
            cov = (psi + jnp.sum(scatter, axis=0)) / (jnp.sum(nk) + extra)
        A = _precision_cholesky(cov + reg_covar * jnp.eye(d, dtype=cov.dtype))
        if covariance_type == "full":
            A = jnp.where(keep[:, None, None], params["prec_chol"], A)
    else:
        scatter = stats["second"] - stats["first"] * offset + shrink[:, None] * dev * dev
        if covariance_type == "diag":
            var = (psi + scatter) / (safe_nk + extra)[:, None] + reg_covar
        else:
            var = (psi + jnp.sum(scatter, axis=1)) / (d * safe_nk + extra) + reg_covar
        A = jnp.where(keep if var.ndim == 1 else keep[:, None], params["prec_chol"],
                      1.0 / jnp.sqrt(var))
    means = jnp.where(keep[:, None], old, means)
    alpha = 1.0 if prior is None else prior.weight_concentration
    return {"weights": mixing_weights(nk, alpha), "means": means, "prec_chol": A}


def _broad_params(X: Array, n_components: int, covariance_type: str, means: Array, weights: Array):
    """Parameters with the given means, equal weights and the data's overall (co)variance (rows
    weighted by ``weights [N]``); used as the fallback for components that an initial assignment
    leaves empty."""
    d = X.shape[1]
    share = weights / jnp.sum(weights)
    centre = share @ X
    var = share @ ((X - centre) ** 2) + 1e-6
    if covariance_type == "full":
        A = jnp.broadcast_to(jnp.diag(1.0 / jnp.sqrt(var)), (n_components, d, d))
    elif covariance_type == "tied":
        A = jnp.diag(1.0 / jnp.sqrt(var))
    elif covariance_type == "diag":
        A = jnp.broadcast_to(1.0 / jnp.sqrt(var), (n_components, d))
    else:
        A = jnp.full((n_components,), 1.0 / jnp.sqrt(jnp.mean(var)), X.dtype)
    mixing = jnp.full((n_components,), 1.0 / n_components, X.dtype)
    return {"weights": mixing, "means": means, "prec_chol": A.astype(X.dtype)}


def _init(key: Array, X: Array, weights: Array | None = None, *, n_components: int,
          covariance_type: str, reg_covar: float, method: str, greedy: bool = True):
    """Initial parameters from rows ``X [N, D]`` weighted by optional ``weights [N]`` (rows of
    weight 0, padding among them, count for nothing); ``greedy=False`` seeds k-means++ with one
    candidate per step (more varied starts)."""
    stats_fn = functools.partial(_suff_stats, covariance_type=covariance_type)
    w = jnp.ones(X.shape[:1], X.dtype) if weights is None else weights.astype(X.dtype)
    if method == "random":
        resp = initialisers.random_responsibilities(key, X.shape[0], n_components, X.dtype)
        centre = jnp.broadcast_to(w @ X / jnp.sum(w), (n_components, X.shape[1]))
        start = _broad_params(X, n_components, covariance_type, centre, w)
    elif method == "random_from_data":
        means = initialisers.random_rows(key, X, n_components, weights)
        return _broad_params(X, n_components, covariance_type, means, w)
    else:
        if method == "kmeans":
            centers, labels = initialisers.kmeans(key, X, n_components, weights=weights)
        else:
            centers = initialisers.kmeans_plusplus(key, X, n_components, weights,
                                                   n_trials=None if greedy else 1)
            labels = jnp.argmin(initialisers.squared_distances(X, centers), axis=1)
        resp = initialisers.hard_responsibilities(labels, n_components, X.dtype)
        start = _broad_params(X, n_components, covariance_type, centers, w)
    stats = blocks.blocked_suff_stats(stats_fn, start, X, resp * w[:, None])
    return _maximize(stats, start, covariance_type, reg_covar)


def constraints_for(covariance_type: str):
    """The constraint pytree of Gaussian-mixture parameters (for the gradient M-step)."""
    chol = C.cholesky if covariance_type in ("full", "tied") else C.positive
    return {"weights": C.simplex, "means": C.real, "prec_chol": chol}


def gaussian_mixture(n_components: int, covariance_type: str = "full", reg_covar: float = 1e-6,
                     init: str = "kmeans", prior: GaussianPrior | None = None,
                     missing: bool = False) -> Model:
    """A Gaussian mixture as a :class:`jaxem.Model` with a closed-form M-step.

    Args:
        n_components: number of components ``K``.
        covariance_type: ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"``.
        reg_covar: added to the diagonal of every covariance in the M-step (keeps them positive
            definite when a component sits on few or duplicate points).
        init: ``"kmeans"`` (k-means++ seeding then Lloyd's iterations, then one M-step on the hard
            assignment), ``"k-means++"`` (the seeding only), ``"random"`` (random responsibilities)
            or ``"random_from_data"`` (random rows as means, the data's variance for every
            component).
        prior: a :class:`GaussianPrior` for MAP-EM (see :func:`gaussian_prior`); the model then
            carries its ``log_prior`` and the fit's history is the penalised log-likelihood.
        missing: accept NaN entries, marginalised out exactly (E-step on each row's observed
            coordinates, conditional moments in the M-step). Slower: a ``[D, D]`` Cholesky per
            row and component for full/tied covariances.

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]``; equal arguments give the same object,
        so repeated fits reuse compiled code.
    """
    n_components = check_positive_int(n_components, "n_components")
    reg_covar = check_nonnegative_float(reg_covar, "reg_covar")
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got "
                         f"{covariance_type!r}")
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    if prior is not None:
        check_prior(prior, covariance_type)
    # One cache key however the arguments were spelt (positional, keyword or default).
    return _gaussian_mixture(int(n_components), covariance_type, float(reg_covar), init, prior,
                             bool(missing))


@model_factory
def _gaussian_mixture(n_components, ct, reg_covar, init, prior, missing) -> Model:
    init_fn = functools.partial(_init, n_components=n_components, covariance_type=ct,
                                reg_covar=reg_covar, method=init)
    # With several restarts every second one starts from plain k-means++ seeds (one candidate
    # per step, no Lloyd iterations): greedy seeds refined by k-means tend to share a few
    # partitions, and the best of the restarts gains from varied starts (wine, K=6, float64, 10
    # restarts: best -8.61 nats/row from greedy k-means alone, -6.65 from plain seeds; random
    # responsibilities gave -10.2 at best).
    explore = (functools.partial(init_fn, method="k-means++", greedy=False)
               if init == "kmeans" and not missing else None)
    if missing:
        init_fn = _with_imputation(init_fn)
    batch = missing_values.batch_log_joint if missing else _batch_log_joint
    return Model(
        init=init_fn,
        log_joint=functools.partial(missing_values.log_joint if missing else _log_joint,
                                    covariance_type=ct),
        batch_log_joint=functools.partial(batch, covariance_type=ct),
        suff_stats=functools.partial(missing_values.suff_stats if missing else _suff_stats,
                                     covariance_type=ct),
        maximize=functools.partial(_maximize, covariance_type=ct, reg_covar=reg_covar,
                                   prior=prior),
        block_stats=(functools.partial(_diagonal_block_stats, covariance_type=ct)
                     if ct in ("diag", "spherical") and not missing else None),
        constraints=constraints_for(ct),
        n_components=n_components,
        name=(f"gaussian_mixture({n_components}, {ct!r}" + (", MAP" if prior else "")
              + (", missing" if missing else "") + ")"),
        log_prior=(None if prior is None
                   else functools.partial(log_prior, covariance_type=ct, prior=prior)),
        handles_missing=missing,
        # Column means impute before the seeding, unweighted: padding would shift them.
        weighted_init=None if missing else init_fn,
        explore_init=explore,
    )


def _with_imputation(init_fn):
    def init(key, X):
        return init_fn(key, missing_values.impute_column_means(X))
    return init


def covariances_from_prec_chol(prec_chol: Array, covariance_type: str) -> Array:
    """Covariances in scikit-learn's shapes: full ``[K, D, D]``, tied ``[D, D]``, diag ``[K, D]``,
    spherical ``[K]``; a NumPy array for concrete input (computed in float64, returned in the
    input's float type), a JAX array under tracing."""
    if not isinstance(prec_chol, jax.core.Tracer):
        # Fitted attributes are host arrays: on the host, a fit's first call does not compile the
        # half-dozen small programs that eager JAX operations would (0.3 s of a 0.5 s fit).
        A = np.asarray(prec_chol)
        wide = A.astype(np.float64)
        if covariance_type in ("full", "tied"):
            L = np.linalg.inv(wide)
            return (L @ np.swapaxes(L, -1, -2)).astype(A.dtype)
        return (1.0 / (wide * wide)).astype(A.dtype)
    if covariance_type in ("full", "tied"):
        # Σ = L L^T with L = A^{-1}.
        eye = jnp.broadcast_to(jnp.eye(prec_chol.shape[-1], dtype=prec_chol.dtype), prec_chol.shape)
        L = linalg.solve_triangular(prec_chol, eye, lower=True)
        return L @ jnp.swapaxes(L, -1, -2)
    return 1.0 / (prec_chol * prec_chol)
