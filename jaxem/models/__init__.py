"""Built-in model families, each a factory returning a :class:`jaxem.Model`."""

from .bernoulli import bernoulli_mixture
from .categorical import categorical_mixture
from .exponential import exponential_mixture
from .gamma import gamma_mixture
from .gaussian import gaussian_mixture
from .independent import independent_mixture
from .kmeans import isotropic_mixture
from .poisson import poisson_mixture
from .student_t import student_t_mixture

__all__ = ["bernoulli_mixture", "categorical_mixture", "exponential_mixture", "gamma_mixture",
           "gaussian_mixture", "independent_mixture", "isotropic_mixture", "poisson_mixture",
           "student_t_mixture"]
