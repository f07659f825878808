"""The model contract: a latent-variable model is a log-joint function plus an initialiser.

For one observation ``x`` a model returns ``log p(x, z=k | params)`` for every latent state ``k``.
Everything else (E-step, log-likelihood, ELBO, the M-step by gradient ascent) follows from that.
A model may also supply a closed-form M-step as *additive* expected sufficient statistics plus a
``maximize`` function; additivity over rows is what lets the same model run in memory, in chunks and
sharded over devices.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
Params = Any
Stats = Any


# The Model keywords that go to its Kernels (older code passed them to Model directly).
_KERNEL_FIELDS = ("batch_log_joint", "block_stats", "hard_block_stats", "check_data",
                  "handles_missing", "cache_key", "weighted_init", "explore_init")


@dataclasses.dataclass(frozen=True)
class Kernels:
    """What a built-in family adds to its :class:`Model` for speed and input checking; a model
    written by a researcher needs none of it.

    Attributes:
        batch_log_joint: optional ``batch_log_joint(params, X) -> [N, K]``, a faster equivalent of
            ``jax.vmap(log_joint, (None, 0))`` written with matrix products.
        block_stats: optional ``block_stats(params, X, posterior) -> (row_objectives [N], stats)``:
            one block's E-step and statistics in one function, for a model whose log-joint and
            statistics share work (the diagonal Gaussian shifts every row to its nearest mean
            for both). ``posterior(log_joint [N, K]) -> (row_objectives [N], resp [N, K])`` is
            the engine's E-step rule with labels and row weights applied. The result must equal
            ``suff_stats(params, X, posterior(batch_log_joint(params, X))[1])``.
        hard_block_stats: optional ``hard_block_stats(params, X, weights) -> (objective,
            assignment [N], stats)``: one block's hard E-step and statistics in one function,
            for a model that can pick each row's most probable component without its full
            log-joint (k-means: the nearest centre needs no per-row norms). With
            ``lj = batch_log_joint(params, X)`` the result must equal, up to round-off,
            ``Σ_n weights_n max_k lj_nk``, the first ``argmax_k lj_nk``, and
            ``suff_stats(params, X, one_hot(assignment) * weights[:, None])``. Used by hard EM
            on rows without partial labels; the model must give ``n_components``.
        check_data: optional ``check_data(X)`` run on the validated NumPy data ``[N, ...]``
            before any compute; raises ``ValueError`` naming the first value the family cannot
            take (e.g. a count that is not an integer).
        handles_missing: whether ``log_joint`` marginalises NaN entries of an observation
            (missing values) and ``suff_stats`` accounts for them; only then does ``fit`` accept
            NaN.
        weighted_init: optional ``weighted_init(key, X, weights) -> params``, the model's ``init``
            honouring row weights ``[N]`` (a row of weight 0 changes nothing). With it the
            in-memory fit pads small data to a few bucket sizes under weight 0, so a new row count
            reuses a compiled program (see :func:`jaxem.core.blocks.bucket_rows`), and the
            initialiser sees the sample weights.
        explore_init: optional ``explore_init(key, X, weights) -> params``, a different kind of
            start used by every second restart of a fit with several (so that restarts do not
            all begin from the same partition); the best restart is still chosen by the
            objective.
        cache_key: set only by jaxem's own factories (see :func:`model_factory`): the factory call
            that built the model. A model with a key may have its compiled fit program served
            from the on-disk program cache (:mod:`jaxem.core.program_cache`).
    """

    batch_log_joint: Callable[[Params, Array], Array] | None = None
    block_stats: Callable[[Params, Array, Callable], tuple[Array, Stats]] | None = None
    hard_block_stats: Callable[[Params, Array, Array], tuple[Array, Array, Stats]] | None = None
    check_data: Callable[[Any], None] | None = None
    handles_missing: bool = False
    cache_key: str | None = None
    weighted_init: Callable[[Array, Array, Array], Params] | None = None
    explore_init: Callable[[Array, Array, Array], Params] | None = None


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Model:
    """A latent-variable model given by pure functions.

    Models compare and hash by identity, so a model object is a stable key for JAX's compilation
    cache: build it once and reuse it (the built-in factories are memoised for that reason).

    Attributes:
        init: ``init(key, X) -> params``. ``X`` is the whole data set ``[N, ...]``; ``params`` is any
            pytree of arrays. It must be traceable (it runs inside the compiled fit, vmapped over
            restart keys).
        log_joint: ``log_joint(params, x) -> [K]``, ``log p(x, z=k | params)`` for ONE observation
            ``x`` (shape ``X.shape[1:]``).
        suff_stats: optional ``suff_stats(params, X, resp) -> stats``: expected sufficient statistics
            of the rows ``X [N, ...]`` under weighted responsibilities ``resp [N, K]`` (already
            multiplied by the sample weights; padded rows have weight 0). It must be additive:
            ``suff_stats(X1 ∪ X2) == suff_stats(X1) + suff_stats(X2)`` leaf by leaf. ``params`` are
            the parameters the responsibilities came from (useful as a centring point).
        maximize: optional ``maximize(stats, params) -> params``: the closed-form maximiser of the
            expected complete-data log-likelihood given the summed statistics. ``params`` are the
            previous parameters (used, for example, to keep a component that received no data).
        constraints: pytree of :class:`jaxem.constraints.Constraint` matching ``params`` (or a prefix
            of it) used by the gradient M-step; ``None`` means every parameter is unconstrained.
        n_components: number of latent states ``K`` when known, for input validation.
        name: a short name for messages.
        log_prior: optional ``log_prior(params) -> scalar``, the log density of a prior on the
            parameters (up to a constant). The fit then maximises the penalised log-likelihood
            ``log p(X | θ) + log p(θ)`` (MAP-EM): ``maximize`` must return the MAP update, the
            gradient M-step adds it to Q, and the reported history includes it.
        kernels: optional :class:`Kernels`, what a built-in family adds for speed and input
            checks. Their fields may also be given to ``Model`` by name (``batch_log_joint=...``)
            and are readable as attributes (``model.batch_log_joint``), as before they moved.
    """

    init: Callable[[Array, Array], Params]
    log_joint: Callable[[Params, Array], Array]
    suff_stats: Callable[[Params, Array, Array], Stats] | None = None
    maximize: Callable[[Stats, Params], Params] | None = None
    constraints: Any = None
    n_components: int | None = None
    name: str = "custom"
    log_prior: Callable[[Params], Array] | None = None
    kernels: Kernels = Kernels()

    def __init__(self, init, log_joint, *, suff_stats=None, maximize=None, constraints=None,
                 n_components=None, name="custom", log_prior=None, kernels=None, **kernel_fields):
        # Keyword-only past log_joint: the fields' order changed when the kernels moved out, so
        # a positional third argument must fail rather than land in another field.
        unknown = sorted(set(kernel_fields) - set(_KERNEL_FIELDS))
        if unknown:
            raise TypeError(f"Model got unexpected keyword argument(s) {', '.join(unknown)}")
        kernels = dataclasses.replace(kernels or Kernels(), **kernel_fields)
        for field, value in zip(
                ("init", "log_joint", "suff_stats", "maximize", "constraints", "n_components",
                 "name", "log_prior", "kernels"),
                (init, log_joint, suff_stats, maximize, constraints, n_components, name,
                 log_prior, kernels), strict=True):
            object.__setattr__(self, field, value)
        if (kernels.hard_block_stats is not None or kernels.block_stats is not None) \
                and suff_stats is None:
            raise ValueError("hard_block_stats and block_stats are faster forms of suff_stats; the "
                             "model needs suff_stats too")
        if kernels.hard_block_stats is not None and n_components is None:
            raise ValueError("a model with hard_block_stats must give n_components (the size of "
                             "hard EM's assignment fingerprint)")
        if (suff_stats is None) != (maximize is None):
            raise ValueError(
                "a closed-form M-step needs both suff_stats and maximize; got only "
                + ("suff_stats" if maximize is None else "maximize"))

    @property
    def has_closed_form(self) -> bool:
        """True when the model supplies ``suff_stats`` and ``maximize``."""
        return self.suff_stats is not None

    def log_joint_matrix(self, params: Params, X: Array) -> Array:
        """``[N, K]`` log-joints of every row of ``X`` (``[N, ...]``)."""
        if self.kernels.batch_log_joint is not None:
            return self.kernels.batch_log_joint(params, X)
        return jax.vmap(self.log_joint, in_axes=(None, 0))(params, X)


def _kernel_field(name: str) -> property:
    return property(lambda self: getattr(self.kernels, name),
                    doc=f"``kernels.{name}`` (see :class:`Kernels`).")


# Read-only as before they moved into Kernels: model.batch_log_joint, model.cache_key, ...
for _name in _KERNEL_FIELDS:
    setattr(Model, _name, _kernel_field(_name))


def stable_repr(value) -> str | None:
    """A text for ``value`` that is the same in every process, or ``None`` when there is none.

    Only values whose ``repr`` is exact and address-free qualify: ``None``, bools, ints, floats
    (``repr`` round-trips), strings, tuples of these and frozen dataclasses made of them. Anything
    else (arrays, callables, objects printed with an address) gives ``None``.
    """
    if value is None or type(value) in (bool, int, float, str):
        return repr(value)
    if isinstance(value, tuple) and type(value) is tuple:
        parts = [stable_repr(v) for v in value]
        return None if None in parts else "(" + "".join(p + ", " for p in parts) + ")"
    if dataclasses.is_dataclass(value) and not isinstance(value, type) \
            and type(value).__dataclass_params__.frozen:
        fields = [(f.name, stable_repr(getattr(value, f.name))) for f in dataclasses.fields(value)]
        if any(text is None for _, text in fields):
            return None
        cls = type(value)
        return f"{cls.__module__}.{cls.__qualname__}(" + ", ".join(f"{n}={t}" for n, t in fields) + ")"
    return None


def model_factory(factory: Callable[..., Model]) -> Callable[..., Model]:
    """Memoise one of jaxem's model factories and record each call on the model it builds.

    Equal arguments give the same :class:`Model` object (``functools.cache``, as before), and the
    model's ``cache_key`` names the call with every argument bound (defaults included). No key is
    recorded when an argument has no :func:`stable_repr` or the factory is not jaxem's own (its
    source would not be part of the program cache's key), so such models are never served from
    the on-disk program cache.
    """
    signature = inspect.signature(factory)
    name = f"{factory.__module__}.{factory.__qualname__}"
    ours = factory.__module__.startswith("jaxem.")

    @functools.wraps(factory)
    def build(*args, **kwargs):
        model = factory(*args, **kwargs)
        if not ours or not isinstance(model, Model):
            return model
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        texts = [(k, stable_repr(v)) for k, v in bound.arguments.items()]
        if any(text is None for _, text in texts):
            return model
        key = f"{name}(" + ", ".join(f"{k}={t}" for k, t in texts) + ")"
        keyed = dataclasses.replace(model, cache_key=key)
        _BUILT_BY_FACTORY[keyed] = key
        return keyed

    return functools.cache(build)


# The models the factories built, with their keys. A copy made with dataclasses.replace (another
# log-joint, say) still carries the key text but is not the model it names.
_BUILT_BY_FACTORY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def factory_cache_key(model) -> str | None:
    """``model.cache_key`` when ``model`` is the very object a :func:`model_factory` built, else
    ``None`` (the key of a modified copy must never serve its program)."""
    key = _BUILT_BY_FACTORY.get(model) if isinstance(model, Model) else None
    return key if key is not None and key == model.cache_key else None
