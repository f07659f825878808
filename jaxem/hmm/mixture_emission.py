"""Any mixture :class:`jaxem.Model` as an HMM emission: state ``s`` emits from its own copy of the
mixture, ``log p(x | z = s) = logsumexp_m log p(x, m | θ_s)``.

The emission's parameters are the mixture's, stacked over states (a leading ``[S]`` axis on every
leaf). It is an ordinary emission :class:`jaxem.Model`, so the Baum-Welch pass needs nothing
new:

- the gradient M-step works for any mixture (its ``log_joint`` and ``constraints`` suffice);
- when the mixture has a closed form, so does the emission. The Baum-Welch statistics of state
  ``s`` and component ``m`` weigh each step by ``γ_t(s) q_t(m | s)``, where ``γ_t(s)`` is the
  state posterior the pass hands to ``suff_stats`` and ``q_t(m | s) = softmax_m log p(x_t, m | θ_s)``
  the within-state posterior, computed here from the same parameters. With these weights the
  expected complete-data log-likelihood of state ``s`` is the mixture's ``Q`` under
  responsibilities ``γ_t(s) q_t(m | s)``, so the mixture's own ``suff_stats`` / ``maximize``
  (vmapped over states) are the exact M-step, mixing weights normalised per state included.

hmmlearn's ``GMMHMM`` is :func:`gmm_hmm`: this emission over :func:`jaxem.gaussian_mixture`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..core.model import Model
from ..core.validation import check_nonnegative_float, check_positive_int
from ..models import gaussian as G
from ..models import init as initialisers
from .emissions import _gaussian_sample
from .model import HMM
from .passes import _FLUSH

Array = jax.Array

def _state_log_densities(mixture: Model, params, X: Array) -> Array:
    """``[S, N, M]`` ``log p(x_n, m | θ_s)``."""
    return jax.vmap(mixture.log_joint_matrix, in_axes=(0, None))(params, X)


def _batch_log_emission(params, X: Array, mixture: Model) -> Array:
    return jax.scipy.special.logsumexp(_state_log_densities(mixture, params, X), axis=-1).T


def _log_emission(params, x: Array, mixture: Model) -> Array:
    return jax.vmap(lambda p: jax.scipy.special.logsumexp(mixture.log_joint(p, x)))(params)


def _suff_stats(params, X: Array, resp: Array, mixture: Model):
    def one_state(p, r):                                        # r [N]: γ_t(s)
        within = jax.nn.softmax(mixture.log_joint_matrix(p, X), axis=-1)
        # Flushed as the pass flushes the state posteriors (float32 subnormals slow products).
        within = jnp.where(within > _FLUSH, within, 0.0)
        return mixture.suff_stats(p, X, r[:, None] * within)

    return jax.vmap(one_state, in_axes=(0, 1))(params, resp)


def _maximize(stats, params, mixture: Model):
    return jax.vmap(mixture.maximize)(stats, params)


def _init(key: Array, X: Array, mixture: Model, n_states: int):
    """k-means splits the rows into ``S`` groups; state ``s`` starts as the mixture's own
    initialiser run on ``N`` rows resampled from group ``s`` (a static shape; the whole data when
    the group is empty), so the states start apart and each mixture fits its own region (as
    hmmlearn's GMMHMM: k-means for the states, then k-means within each)."""
    k_groups, k_states = jax.random.split(key)
    _, labels = initialisers.kmeans(k_groups, X, n_states)
    n = X.shape[0]

    def one_state(k, s):
        k_rows, k_init = jax.random.split(k)
        member = (labels == s).astype(X.dtype)
        p = jnp.where(jnp.sum(member) > 0, member, jnp.ones_like(member))
        rows = jax.random.choice(k_rows, n, (n,), p=p / jnp.sum(p))
        return mixture.init(k_init, X[rows])

    return jax.vmap(one_state)(jax.random.split(k_states, n_states), jnp.arange(n_states))


@functools.cache
def mixture_emission(mixture: Model, n_states: int) -> Model:
    """An emission :class:`jaxem.Model` in which each of ``n_states`` states emits from its own
    copy of ``mixture`` (see the module).

    Args:
        mixture: any mixture :class:`jaxem.Model` (its ``log_joint`` gives ``[M]`` components).
            With ``suff_stats`` / ``maximize`` the emission has a closed-form M-step; without,
            :func:`jaxem.hmm.fit` ascends its gradient (``constraints`` apply leaf by leaf to the
            stacked parameters, so they must act on the trailing axes, as jaxem's do).
        n_states: hidden states ``S``.

    Returns:
        A memoised :class:`jaxem.Model` for ``HMM(emission=..., n_states=S)``; its parameters are
        the mixture's with a leading ``[S]`` axis on every leaf, and ``log_joint(params, x)`` is
        ``[S]`` log-emissions.
    """
    n_states = check_positive_int(n_states, "n_states")
    if mixture.log_prior is not None:
        raise ValueError(f"{mixture.name} carries a log_prior, which an HMM emission does not take "
                         "(the chain's Dirichlet priors are the HMM's own); build the mixture "
                         "without a prior")
    closed = mixture.has_closed_form
    return Model(
        init=functools.partial(_init, mixture=mixture, n_states=n_states),
        log_joint=functools.partial(_log_emission, mixture=mixture),
        batch_log_joint=functools.partial(_batch_log_emission, mixture=mixture),
        suff_stats=functools.partial(_suff_stats, mixture=mixture) if closed else None,
        maximize=functools.partial(_maximize, mixture=mixture) if closed else None,
        constraints=mixture.constraints, n_components=n_states,
        name=f"mixture_emission({mixture.name}, {n_states})")


# -- hmmlearn's GMMHMM -------------------------------------------------------------------------
def _gmm_sample(key, params, state, covariance_type: str):
    """One draw from state ``state``: a component by its weight, then that Gaussian."""
    k_mix, k_obs = jax.random.split(key)
    component = jax.random.categorical(k_mix, jnp.log(params["weights"][state]))
    gaussians = {"means": params["means"][state], "prec_chol": params["prec_chol"][state]}
    # Per state, hmmlearn's "tied" shares one covariance among the state's components.
    if covariance_type == "tied":
        gaussians["prec_chol"] = jnp.broadcast_to(gaussians["prec_chol"],
                                                  gaussians["means"].shape[:1]
                                                  + gaussians["prec_chol"].shape)
        return _gaussian_sample(k_obs, gaussians, component, "full")
    return _gaussian_sample(k_obs, gaussians, component, covariance_type)


@functools.cache
def gmm_hmm(n_states: int, n_mix: int, covariance_type: str = "diag", min_covar: float = 1e-3,
            init: str = "kmeans", initial_concentration: float = 1.0,
            transition_concentration: float = 1.0) -> HMM:
    """An HMM whose states emit from Gaussian mixtures of ``n_mix`` components (hmmlearn's GMMHMM).

    Args:
        n_states: hidden states ``S``; n_mix: Gaussians per state ``M``.
        covariance_type: ``"diag"``, ``"full"``, ``"spherical"`` or ``"tied"`` (one full
            covariance shared by the components of each state, as hmmlearn's).
        min_covar: added to every covariance's diagonal in the M-step.
        init: the within-state mixtures' start, as in :func:`jaxem.gaussian_mixture`.
        initial_concentration, transition_concentration: Dirichlet priors on the chain.

    Returns:
        A memoised :class:`HMM`; emission parameters ``{"weights": [S, M], "means": [S, M, D],
        "prec_chol": [S, ...]}`` (``prec_chol`` per state as in :mod:`jaxem.models.gaussian`).
    """
    check_positive_int(n_mix, "n_mix")
    check_nonnegative_float(min_covar, "min_covar")
    mixture = G.gaussian_mixture(n_mix, covariance_type, min_covar, init)
    return HMM(emission=mixture_emission(mixture, n_states), n_states=n_states,
               sample_emission=functools.partial(_gmm_sample, covariance_type=covariance_type),
               initial_concentration=initial_concentration,
               transition_concentration=transition_concentration,
               name=f"gmm_hmm({n_states}, {n_mix}, {covariance_type!r})")
