"""scikit-learn's estimator base classes when scikit-learn is installed, stand-ins when it is not.

scikit-learn is not a runtime dependency, yet its tools (``clone``, ``Pipeline``, ``GridSearchCV``,
``check_estimator``) need estimators that inherit ``sklearn.base.BaseEstimator`` and its mixins
(scikit-learn >= 1.6 reads an estimator's ``__sklearn_tags__``). The estimators therefore inherit
the names below: scikit-learn's own classes when it can be imported (then ``get_params``,
``set_params``, ``__repr__``, ``_repr_html_``, pickling with ``_sklearn_version`` and the tags are
scikit-learn's), otherwise small classes with the same protocol (``get_params``, ``set_params``,
``__repr__``; no tags, since nothing reads them without scikit-learn).

The choice is made once, at import: installing scikit-learn later needs a new Python process.
Importing scikit-learn costs about 0.7 s (it imports SciPy); it happens only where it is installed.
"""

from __future__ import annotations

import inspect

from ..core import validation

__all__ = ["HAVE_SKLEARN", "BaseEstimator", "ClusterMixin", "DensityMixin", "NotFittedError",
           "TransformerMixin"]

try:
    from sklearn.base import BaseEstimator, ClusterMixin, DensityMixin, TransformerMixin
    from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

    HAVE_SKLEARN = True

    class NotFittedError(validation.NotFittedError, _SklearnNotFittedError):
        """Raised when a method that needs fitted parameters is called before ``fit``; both
        jaxem's and scikit-learn's ``NotFittedError`` (and a ``ValueError`` and an
        ``AttributeError``)."""

except ImportError:  # scikit-learn is optional
    HAVE_SKLEARN = False
    NotFittedError = validation.NotFittedError

    class BaseEstimator:
        """scikit-learn's hyperparameter protocol, for when scikit-learn is not installed:
        hyperparameters are the ``__init__`` signature's names, stored unchanged as attributes."""

        @classmethod
        def _get_param_names(cls) -> list[str]:
            return sorted(p.name for p in inspect.signature(cls.__init__).parameters.values()
                          if p.name != "self" and p.kind != p.VAR_KEYWORD)

        def get_params(self, deep: bool = True) -> dict:
            """Hyperparameters as a dict (scikit-learn's protocol)."""
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            """Set hyperparameters by name; returns ``self``."""
            valid = self._get_param_names()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; "
                                     f"valid parameters are {sorted(valid)}")
                setattr(self, name, value)
            return self

        def __repr__(self) -> str:
            # As scikit-learn prints by default: only what differs from the defaults.
            defaults = {p.name: p.default
                        for p in inspect.signature(type(self).__init__).parameters.values()}
            changed = []
            for name, value in self.get_params().items():
                default = defaults.get(name, inspect.Parameter.empty)
                if not _same(value, default):
                    changed.append(f"{name}={value!r}")
            return f"{type(self).__name__}({', '.join(changed)})"

    class ClusterMixin:
        """Stand-in for scikit-learn's ``ClusterMixin`` (clusterers set ``labels_`` in ``fit``)."""

        def fit_predict(self, X, y=None, **kwargs):
            """Fit, then return ``labels_`` ``[N]``."""
            self.fit(X, y, **kwargs)
            return self.labels_

    class DensityMixin:
        """Stand-in for scikit-learn's ``DensityMixin`` (density estimators define ``score``)."""

    class TransformerMixin:
        """Stand-in for scikit-learn's ``TransformerMixin``."""

        def fit_transform(self, X, y=None, **fit_params):
            """Fit, then transform ``X``."""
            return self.fit(X, y, **fit_params).transform(X)


def _same(value, default) -> bool:
    """Whether a hyperparameter still has its default (arrays compare by identity)."""
    if value is default:
        return True
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False
