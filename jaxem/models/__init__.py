"""Built-in model families, each a factory returning a :class:`jaxem.Model`."""

from .bernoulli import bernoulli_mixture
from .gaussian import gaussian_mixture

__all__ = ["bernoulli_mixture", "gaussian_mixture"]
