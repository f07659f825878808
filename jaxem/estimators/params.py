"""Hyperparameters as declarations, and what the mixture and the HMM estimators share.

A class states what it adds to its bases' hyperparameters in two dicts:

- ``_parameters``: name -> default, in signature order. A new name goes right after the name
  before it in the dict (first, when it opens the dict); a name a base already declares keeps its
  place and only marks it (value ``...``) or changes its default.
- ``_constraints``: name -> ``check(value, name)`` (see :mod:`jaxem.estimators.checks`), merged
  with the bases'; :meth:`Hyperparameters._check_hyperparameters` runs them, the one place where
  hyperparameters are checked.

From these each class gets an ``__init__`` with a real signature (the first ``_positional`` names
may be given by position, the rest by keyword) that stores every argument unchanged, so
``inspect.signature``, ``get_params``, ``set_params`` and ``sklearn.clone`` see an ordinary
scikit-learn constructor. The protocol itself (``get_params``, ``set_params``, ``__repr__``) is
``sklearn.base.BaseEstimator``'s where scikit-learn is installed (see :mod:`.compat`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator

import numpy as np

from ..core import precision
from ..core.driver import key_from_seed
from ..core.result import FitInterrupted
from ..core.validation import check_positive_int, check_tolerance
from .checks import check_accelerate, check_checkpoint, check_m_step, one_of
from .compat import BaseEstimator


def _as_key(random_state):
    """A JAX key from ``None`` (fresh entropy from NumPy), an int, a NumPy ``RandomState`` or
    ``Generator`` (a seed drawn from it, as scikit-learn and hmmlearn accept), or a key."""
    if random_state is None:
        return key_from_seed(np.random.randint(0, 2**31 - 1))
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return key_from_seed(random_state)
    if isinstance(random_state, np.random.RandomState):
        return key_from_seed(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return key_from_seed(random_state.integers(0, 2**31 - 1))
    return random_state


@contextlib.contextmanager
def recording_interrupted(record: Callable) -> Iterator[None]:
    """Around an estimator's fit: when Ctrl-C stops it (:class:`jaxem.FitInterrupted`), set the
    fitted attributes from the parameters reached so far with ``record(result)`` (so
    ``converged_`` is False and the estimator predicts with them), then let the interrupt go on."""
    try:
        yield
    except FitInterrupted as stop:
        record(stop.result)
        raise


def _merge(inherited: dict, own: dict, owner: str) -> dict:
    """The bases' ordered name -> default with a class's ``_parameters`` applied (module rule)."""
    names, defaults = list(inherited), dict(inherited)
    previous = None
    for name, default in own.items():
        if name not in defaults:
            if default is ...:
                raise TypeError(f"{owner}: {name!r} marks a place but no base declares it")
            names.insert(0 if previous is None else names.index(previous) + 1, name)
        if default is not ...:
            defaults[name] = default
        previous = name
    return {name: defaults[name] for name in names}


def _constructor(signature: inspect.Signature, owner: str):
    def __init__(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{owner}(): {err}") from None
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{owner}.__init__"
    __init__.__doc__ = f"Store the hyperparameters unchanged (see :class:`{owner}`)."
    return __init__


class Hyperparameters(BaseEstimator):
    """scikit-learn's hyperparameter protocol over declared hyperparameters (see the module)."""

    _parameters: dict = {}
    _constraints: dict = {}
    _positional = 1
    # False: the class's ``_parameters`` is its whole signature (KMeans keeps scikit-learn's).
    _inherit_parameters = True
    _defaults: dict = {}  # every hyperparameter, in signature order: name -> default
    # scikit-learn input tags (``sklearn.utils.InputTags`` fields) this class sets, e.g.
    # ``{"allow_nan": True}``; merged over the bases' like ``_constraints``.
    _input_tags: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        inherited = cls._defaults if cls.__dict__.get("_inherit_parameters", True) else {}
        cls._defaults = _merge(inherited, cls._own_parameters(), cls.__qualname__)
        constraints = {}
        for klass in reversed(cls.__mro__):
            constraints.update(klass.__dict__.get("_constraints", {}))
        cls._all_constraints = constraints
        positional, keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
        params = [inspect.Parameter("self", positional)] + [
            inspect.Parameter(name, positional if i < cls._positional else keyword, default=default)
            for i, (name, default) in enumerate(cls._defaults.items())]
        cls.__init__ = _constructor(inspect.Signature(params), cls.__qualname__)

    @classmethod
    def _own_parameters(cls) -> dict:
        """This class's declaration (not its bases'); a base may derive some of it."""
        return cls.__dict__.get("_parameters", {})

    def _check_hyperparameters(self) -> None:
        """Run every declared constraint of this estimator's hyperparameters."""
        for name, check in self._all_constraints.items():
            if name in self._defaults:
                check(getattr(self, name), name)

    def __sklearn_tags__(self):
        """scikit-learn's tags (only called where scikit-learn is installed): the mixins' with
        the declared ``_input_tags`` applied."""
        tags = super().__sklearn_tags__()
        for name, value in input_tags(type(self)).items():
            setattr(tags.input_tags, name, value)
        return tags


def input_tags(cls: type) -> dict:
    """The input tags an estimator class declares (``_input_tags``, merged over its bases), e.g.
    ``{"allow_nan": True}`` where it takes NaN as a missing value; known without scikit-learn."""
    tags = {}
    for klass in reversed(cls.__mro__):
        tags.update(klass.__dict__.get("_input_tags", {}))
    return tags


# Methods that fit: they compute in the float type the ``dtype`` hyperparameter resolves to on
# their data. Methods that use a fit: in the float type of the fitted arrays.
_FIT_METHODS = ("fit", "fit_chunked")
_FITTED_METHODS = ("predict", "predict_proba", "predict_component", "score", "score_samples",
                   "bic", "aic", "sample", "decode", "transform")


def _in_fit_precision(method):
    @functools.wraps(method)
    def fit(self, X, *args, **kwargs):
        width = precision.resolve(self.dtype, n_values=precision.data_values(X), tol=self.tol)
        if not precision.differs(width):
            return method(self, X, *args, **kwargs)
        with precision.scope(width):
            out = method(self, X, *args, **kwargs)
        # Fitted attributes leave the scope as NumPy arrays of the fit's width.
        for name, value in list(vars(self).items()):
            if name.endswith("_") and not name.startswith("_"):
                setattr(self, name, precision.to_host_result(value))
        return out
    return fit


def _in_fitted_precision(method):
    @functools.wraps(method)
    def use(self, *args, **kwargs):
        fitted = getattr(self, self._fitted_attribute, None)
        width = getattr(fitted, "dtype", None)
        if width is None or width.kind != "f" or not precision.differs(width):
            return method(self, *args, **kwargs)
        return precision.run_in(width, method, self, *args, **kwargs)
    return use


class EMEstimator(Hyperparameters):
    """Base of the mixture and HMM estimators: the hyperparameters and checks they share, the
    record of a fit, and ``save``.

    ``dtype`` (``"auto"``, ``"float32"``, ``"float64"``, ``None``: JAX's default) is the float
    type a fit computes in, without JAX's global x64 flag (see
    :func:`jaxem.core.precision.resolve`); the fitted arrays keep it, and prediction and scoring
    compute in it too.
    """

    _parameters = {"n_components": 1, "tol": 1e-6, "n_restarts": 1, "init_params": None,
                   "random_state": None, "m_step": "auto", "optimizer": None, "e_step": "soft",
                   "accelerate": "auto", "verbose": 0, "dtype": "auto", "checkpoint": None,
                   "resume": False}
    _constraints = {"n_components": check_positive_int, "n_restarts": check_positive_int,
                    "tol": check_tolerance, "m_step": check_m_step,
                    "dtype": lambda value, name: precision.check_dtype(value, name),
                    "checkpoint": check_checkpoint, "resume": one_of((False, True)),
                    "accelerate": check_accelerate}
    _fitted_attribute = "weights_"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for names, wrap in ((_FIT_METHODS, _in_fit_precision),
                            (_FITTED_METHODS, _in_fitted_precision)):
            for name in names:
                if name in cls.__dict__:
                    setattr(cls, name, wrap(cls.__dict__[name]))

    def save(self, path) -> str:
        """Write hyperparameters and fitted attributes to ``path`` (``.npz``); see :func:`jaxem.load`.

        Returns:
            ``path`` as a string.
        """
        from ..app.io import save

        return save(self, path)

    def _restarts(self, start) -> int:
        """Starts to run: one from given parameters ``start``, else ``n_restarts`` random ones."""
        return 1 if start is not None else self.n_restarts

    def _record_run(self, result, per: float | None = None) -> None:
        """Set ``converged_``, ``n_iter_``, ``history_`` (divided by ``per`` when given) and
        ``fit_result_`` from the best restart of a :class:`jaxem.FitResult`."""
        best = result.best_restart
        self.converged_ = bool(result.converged[best])
        self.n_iter_ = int(result.n_iter[best])
        self.history_ = result.history[best] if per is None else result.history[best] / per
        self.fit_result_ = result
