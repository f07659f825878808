"""Built-in model families, each a factory returning a :class:`jaxem.Model`."""

from .bayesian_gaussian import bayesian_gaussian_mixture, variational_prior
from .bernoulli import bernoulli_mixture
from .categorical import categorical_mixture
from .experts import mixture_of_experts
from .exponential import exponential_mixture
from .factor_analysers import mixture_of_factor_analysers
from .gamma import gamma_mixture
from .gaussian import gaussian_mixture
from .gaussian_prior import GaussianPrior, gaussian_prior
from .independent import independent_mixture
from .kmeans import isotropic_mixture
from .poisson import poisson_mixture
from .regression import mixture_of_linear_regressions
from .student_t import student_t_mixture

__all__ = ["bayesian_gaussian_mixture", "bernoulli_mixture", "categorical_mixture", "exponential_mixture",
           "gamma_mixture", "gaussian_mixture", "independent_mixture", "isotropic_mixture", "poisson_mixture",
           "student_t_mixture", "GaussianPrior", "gaussian_prior", "mixture_of_experts",
           "mixture_of_factor_analysers", "mixture_of_linear_regressions", "variational_prior"]
