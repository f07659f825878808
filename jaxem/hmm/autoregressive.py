"""The linear autoregressive Gaussian HMM (dynamax's ``LinearAutoregressiveHMM``):

    x_t | z_t = s  ~  N(W_s u_t + b_s, Σ_s),   u_t = [x_{t-1}, x_{t-2}, ..., x_{t-L}]   ([L D])

with ``L = num_lags``. Lags before a sequence's first step are zeros (dynamax's convention), so
every step, the first ``L`` included, is an emission.

No engine code: the lags are made part of the observation. :func:`lagged_rows` lays each step
out as one row ``[u_t, x_t]`` (``L D + D`` values; each sequence's own lags, never its
neighbour's), and the emission below is an ordinary emission :class:`jaxem.Model` on those rows:
a switching multivariate linear regression, whose closed-form M-step is weighted least squares
per state. Its statistics are taken about the previous coefficients (residuals
``e_t = x_t - B_s^old φ_t`` with ``φ_t = [u_t, 1]``): ``Σ γ φφ^T``, ``Σ γ φ e^T`` and
``Σ γ e e^T`` add over rows, and the new scatter ``Σ γ e e^T - Δ^T Σ γ φ e^T`` (``Δ`` the
coefficients' change) does not cancel in float32 as moments of ``x`` about the origin would.

Parameters (a dict): ``coef [S, D, L D]`` (``W_s``, lag 1 first, as dynamax's ``weights``),
``intercept [S, D]`` (``b_s``), ``prec_chol [S, D, D]`` (``A_s = L_s^{-1}`` for
``Σ_s = L_s L_s^T``, as the Gaussian families).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..core import constraints as C
from ..core import precision
from ..core.model import Model
from ..core.validation import check_nonnegative_float, check_positive_int
from ..models import gaussian as G
from ..models import init as initialisers
from ..models.common import centred_moments, empty_components
from ..models.regression import solve_psd
from . import inference
from .model import HMM, check_lengths

Array = jax.Array


def lagged_rows(X, lengths=None, num_lags: int = 1) -> np.ndarray:
    """Each step as one row ``[x_{t-1}, ..., x_{t-L}, x_t]`` (NumPy).

    Args:
        X: ``[N, D]`` observations of all sequences one after another.
        lengths: optional ``[B]`` sequence lengths summing to ``N`` (default: one sequence).
        num_lags: ``L``.

    Returns:
        ``[N, L D + D]``; lags reaching before a sequence's start are 0.
    """
    X = np.asarray(X)
    num_lags = check_positive_int(num_lags, "num_lags")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-dimensional [n_samples, n_features], got shape {X.shape}")
    lengths = np.array([X.shape[0]]) if lengths is None else check_lengths(lengths, X.shape[0])
    starts = np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    steps = np.arange(X.shape[0])
    parts = []
    for lag in range(1, num_lags + 1):
        inside = steps - lag >= starts
        parts.append(np.where(inside[:, None], X[np.maximum(steps - lag, 0)], 0.0))
    return np.concatenate(parts + [X], axis=1).astype(X.dtype if X.dtype.kind == "f" else float)


def _split(Z: Array, n_features: int) -> tuple[Array, Array]:
    """Rows ``[N, L D + D]`` as the design ``Φ [N, L D + 1]`` (lags, then 1) and targets ``[N, D]``."""
    inputs, y = Z[:, :-n_features], Z[:, -n_features:]
    return jnp.concatenate([inputs, jnp.ones_like(y[:, :1])], axis=1), y


def _stacked(params) -> Array:
    """``B_s = [W_s, b_s]``, ``[S, D, L D + 1]``."""
    return jnp.concatenate([params["coef"], params["intercept"][..., None]], axis=-1)


def _batch_log_emission(params, Z: Array, n_features: int) -> Array:
    Phi, y = _split(Z, n_features)
    resid = y[:, None, :] - jnp.einsum("np,sdp->nsd", Phi, _stacked(params))
    A = params["prec_chol"]
    white = jnp.einsum("sde,nse->nsd", A, resid)
    log_det = jnp.sum(jnp.log(jnp.diagonal(A, axis1=-2, axis2=-1)), axis=-1)
    return log_det - 0.5 * n_features * math.log(2 * math.pi) - 0.5 * jnp.sum(white * white, -1)


def _log_emission(params, z: Array, n_features: int) -> Array:
    return _batch_log_emission(params, z[None], n_features)[0]


def _suff_stats(params, Z: Array, resp: Array, n_features: int):
    Phi, y = _split(Z, n_features)
    resid = y[:, None, :] - jnp.einsum("np,sdp->nsd", Phi, _stacked(params))     # [N, S, D]
    weighted = resp[:, :, None] * resid
    return {"nk": jnp.sum(resp, axis=0),
            "gram": centred_moments(Phi, None, resp)[1],                      # [S, P, P]
            "xe": jnp.einsum("np,nsd->spd", Phi, weighted),                     # [S, P, D]
            "ee": jnp.einsum("nsd,nse->sde", weighted, resid)}                  # [S, D, D]


def _maximize(stats, params, reg_covar: float):
    """Weighted least squares per state; a state with (numerically) no data keeps its
    parameters."""
    empty, safe_nk = empty_components(stats["nk"])
    # Δ_s = gram_s^{-1} xe_s, one right-hand side per output coordinate.
    delta = jax.vmap(solve_psd, in_axes=(None, -1), out_axes=-1)(stats["gram"], stats["xe"])
    scatter = stats["ee"] - jnp.einsum("spd,spe->sde", delta, stats["xe"])
    scatter = 0.5 * (scatter + jnp.swapaxes(scatter, -1, -2))
    d = scatter.shape[-1]
    cov = scatter / safe_nk[:, None, None] + reg_covar * jnp.eye(d, dtype=scatter.dtype)
    B = _stacked(params) + jnp.swapaxes(delta, -1, -2)
    keep = empty[:, None, None]
    return {"coef": jnp.where(keep, params["coef"], B[..., :-1]),
            "intercept": jnp.where(empty[:, None], params["intercept"], B[..., -1]),
            "prec_chol": jnp.where(keep, params["prec_chol"], G._precision_cholesky(cov))}


def _init(key: Array, Z: Array, n_states: int, n_features: int, reg_covar: float, method: str):
    # Starting responsibilities cluster the rows [lags, x]; one M-step from zero coefficients
    # (statistics about zero are those of plain least squares) fits each state's regression.
    resp = initialisers.initial_responsibilities(key, Z, n_states, method)
    p = Z.shape[1] - n_features
    start = {"coef": jnp.zeros((n_states, n_features, p), Z.dtype),
             "intercept": jnp.zeros((n_states, n_features), Z.dtype),
             "prec_chol": jnp.broadcast_to(jnp.eye(n_features, dtype=Z.dtype),
                                           (n_states, n_features, n_features))}
    return _maximize(_suff_stats(start, Z, resp, n_features), start, reg_covar)


@functools.cache
def autoregressive_hmm(n_states: int, n_features: int, num_lags: int = 1,
                       reg_covar: float = 1e-6, init: str = "kmeans",
                       initial_concentration: float = 1.0,
                       transition_concentration: float = 1.0) -> HMM:
    """The linear autoregressive Gaussian HMM on rows laid out by :func:`lagged_rows`.

    Args:
        n_states: hidden states ``S``; n_features: ``D``; num_lags: ``L``.
        reg_covar: added to every covariance's diagonal in the M-step.
        init: starting responsibilities on the rows ``[lags, x]``, as
            :func:`jaxem.init.initial_responsibilities`; each state's regression is then fitted.
        initial_concentration, transition_concentration: Dirichlet priors on the chain.

    Returns:
        A memoised :class:`HMM` on observations ``[L D + D]`` (see the module for its
        parameters). Fit it with ``jaxem.hmm.fit(hmm, lagged_rows(X, lengths, L), lengths)``;
        draw from it with :func:`sample_autoregressive`.
    """
    n_states = check_positive_int(n_states, "n_states")
    n_features = check_positive_int(n_features, "n_features")
    num_lags = check_positive_int(num_lags, "num_lags")
    check_nonnegative_float(reg_covar, "reg_covar")
    if init not in initialisers.INIT_METHODS:
        raise ValueError(f"init must be one of {initialisers.INIT_METHODS}, got {init!r}")
    emission = Model(
        init=functools.partial(_init, n_states=n_states, n_features=n_features,
                               reg_covar=reg_covar, method=init),
        log_joint=functools.partial(_log_emission, n_features=n_features),
        batch_log_joint=functools.partial(_batch_log_emission, n_features=n_features),
        suff_stats=functools.partial(_suff_stats, n_features=n_features),
        maximize=functools.partial(_maximize, reg_covar=reg_covar),
        constraints={"coef": C.real, "intercept": C.real, "prec_chol": C.cholesky},
        n_components=n_states, name=f"autoregressive emission({n_states}, L={num_lags})")
    return HMM(emission=emission, n_states=n_states,
               initial_concentration=initial_concentration,
               transition_concentration=transition_concentration,
               name=f"autoregressive_hmm({n_states}, {n_features}, {num_lags})")


@functools.partial(precision.jit, static_argnames=("n_steps",))
def sample_autoregressive(key: Array, params, n_steps: int) -> tuple[Array, Array]:
    """Draw one sequence from an autoregressive HMM, starting from zero lags.

    Args:
        key: PRNG key; params: ``{"initial", "transition", "emission"}`` as fitted.
        n_steps: steps ``T``.

    Returns:
        ``(X [T, D], states [T])``.
    """
    em = params["emission"]
    n_features, p = em["coef"].shape[1:]
    k_states, k_noise = jax.random.split(key)
    states = inference.sample_states(k_states, params["initial"], params["transition"], n_steps)
    noise = jax.random.normal(k_noise, (n_steps, n_features), em["coef"].dtype)

    def step(lags, inputs):                                    # lags [L D], lag 1 first
        s, eps = inputs
        chol = jax.scipy.linalg.solve_triangular(em["prec_chol"][s],
                                                 jnp.eye(n_features, dtype=eps.dtype), lower=True)
        x = em["coef"][s] @ lags + em["intercept"][s] + chol @ eps
        return jnp.concatenate([x, lags[:p - n_features]]), x

    _, X = jax.lax.scan(step, jnp.zeros((p,), noise.dtype), (states, noise))
    return X, states
