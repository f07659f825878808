"""scikit-learn's hyperparameter protocol, shared by the mixture and the HMM estimators."""

from __future__ import annotations


class Hyperparameters:
    """``get_params``, ``set_params`` and a ``repr`` over the names ``_param_names()`` gives
    (a subclass supplies it, usually from its ``__init__`` signature), so ``sklearn.clone`` and
    grid searches work."""

    @classmethod
    def _param_names(cls) -> list[str]:
        raise NotImplementedError

    def get_params(self, deep: bool = True) -> dict:
        """Hyperparameters as a dict (scikit-learn's protocol, so ``clone`` and grid search work)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set hyperparameters; returns ``self``."""
        for name, value in params.items():
            if name not in self._param_names():
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
