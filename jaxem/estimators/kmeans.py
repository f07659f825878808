"""scikit-learn-style k-means: hard EM on the isotropic, equal-weight, shared-variance mixture."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from ..core import blocks, precision
from ..core import inference as em
from ..core.validation import check_data, check_positive_int, to_device
from ..models import kmeans as kmeans_family
from .base import MixtureEstimator
from .compat import ClusterMixin, TransformerMixin


def _check_init(value, name: str) -> None:
    if isinstance(value, str) and value not in kmeans_family.INIT_METHODS:
        raise ValueError(f"{name} must be one of {kmeans_family.INIT_METHODS} or an array of "
                         f"centres, got {value!r}")


class KMeans(ClusterMixin, TransformerMixin, MixtureEstimator):
    """k-means clustering as hard (classification) EM, restarts vmapped into one program.

    Each iteration assigns every row to its nearest centre and moves each centre to the mean of its
    rows: hard EM on :func:`jaxem.models.kmeans.isotropic_mixture`. The fit stops when the
    classification log-likelihood changes by at most ``tol`` relative (``tol=0``: when the
    assignments stop changing). A cluster that loses all its rows keeps its centre.

    Args:
        n_clusters: number of clusters ``K``.
        n_restarts: random starts (k-means++ seedings), run together; the lowest inertia wins.
        max_iter: maximum iterations per start.
        tol: relative tolerance on the classification log-likelihood.
        init: ``"k-means++"``, ``"random_from_data"``, or an array ``[K, D]`` of initial centres.
        random_state: ``None``, an int or a JAX key.
        verbose: ``0`` no progress bar, ``1`` a bar on a terminal, ``2`` always.
        checkpoint, resume: save the fit's loop state to a file and continue from it, as in
            :func:`jaxem.fit`.
        dtype: ``"auto"``, ``"float32"``, ``"float64"`` or ``None``, the float type to compute in
            (see :class:`jaxem.estimators.params.EMEstimator`).

    Fitted attributes:
        ``cluster_centers_ [K, D]``, ``labels_ [N]``, ``inertia_`` (sum of squared distances of
        the rows to their centres), ``n_iter_``, ``converged_``, ``fit_result_``.
    """

    _fitted_attribute = "cluster_centers_"

    # scikit-learn's KMeans signature, not the mixtures': hard EM with the closed-form M-step, so
    # e_step, m_step, optimizer and accelerate are fixed below rather than hyperparameters.
    _inherit_parameters = False
    _parameters = {"n_clusters": 8, "n_restarts": 1, "max_iter": 300, "tol": 1e-6,
                   "init": "k-means++", "random_state": None, "verbose": 0, "dtype": "auto",
                   "checkpoint": None, "resume": False}
    _constraints = {"n_clusters": check_positive_int, "init": _check_init}
    e_step = "hard"
    m_step = "closed_form"
    optimizer = None
    accelerate = None

    @property
    def n_components(self) -> int:
        """The number of clusters (the name the shared mixture machinery uses); an alias of
        ``n_clusters``, so assigning it sets ``n_clusters``."""
        return self.n_clusters

    @n_components.setter
    def n_components(self, value) -> None:
        self.n_clusters = value

    def _model(self):
        method = self.init if isinstance(self.init, str) else "k-means++"
        return kmeans_family.isotropic_mixture(int(self.n_clusters), method)

    def _initial_params(self, X: np.ndarray):
        if isinstance(self.init, str):
            return None
        centers = check_data(self.init, name="init", ndim=2)
        if centers.shape != (self.n_clusters, X.shape[1]):
            raise ValueError(f"init centres must have shape ({self.n_clusters}, {X.shape[1]}), got "
                             f"{centers.shape}")
        dtype = em.default_float_dtype()
        return kmeans_family.params_from_centers(jnp.asarray(X, dtype), jnp.asarray(centers, dtype))

    def _params(self):
        dtype = em.default_float_dtype()
        return {"means": jnp.asarray(self.cluster_centers_, dtype),
                "variance": jnp.asarray(self.variance_, dtype)}

    def _set_params_from(self, params) -> None:
        self.cluster_centers_ = np.asarray(params["means"])
        self.variance_ = float(params["variance"])

    def _n_parameters(self) -> int:
        return self.n_clusters * self.n_features_in_ + 1

    def fit(self, X, y=None, sample_weight=None, labels=None):
        """Cluster ``X [N, D]``; ``y`` is ignored; ``labels`` (optional ``[N]``, ``-1`` unknown)
        pins rows to clusters.

        Returns:
            ``self``, with ``cluster_centers_``, ``labels_``, ``inertia_`` and the rest set.
        """
        super().fit(X, sample_weight=sample_weight, labels=labels)
        labels, distances = self._nearest(X)
        self.labels_ = labels
        weights = 1.0 if sample_weight is None else np.asarray(sample_weight, np.float64)
        self.inertia_ = float(np.sum(weights * distances))
        return self

    def _squared_distances(self, X) -> np.ndarray:
        self._check_fitted()
        X = self._validate(X, fitting=False)
        return np.asarray(_squared_distances(self._params(), to_device(X)))

    def _nearest(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``(index of the nearest centre [N], squared distance to it [N])``, computed on the
        device: only ``[N]`` values come back, not the ``[N, K]`` distances."""
        self._check_fitted()
        X = self._validate(X, fitting=False)
        labels, distances = _nearest(self._params(), to_device(X))
        return np.asarray(labels), np.asarray(distances)

    def transform(self, X) -> np.ndarray:
        """Euclidean distance of each row to each centre, ``[N, K]``."""
        return np.sqrt(self._squared_distances(X))

    def predict(self, X) -> np.ndarray:
        """Index of the nearest centre for each row, ``[N]``."""
        return self._nearest(X)[0]

    def score(self, X, y=None) -> float:
        """Negative inertia of ``X`` (scikit-learn's convention: higher is better)."""
        return -float(np.sum(self._nearest(X)[1]))

    def _sample_components(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.n_clusters, size=n_samples)

    def _sample_rows(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.normal(scale=np.sqrt(self.variance_), size=(len(labels), self.n_features_in_))
        return np.asarray(self.cluster_centers_, np.float64)[labels] + noise


# Row by row, a block at a time: the [K, N] table for all rows at once is memory traffic.
_squared_distances = precision.jit(
    lambda params, X: blocks.map_row_blocks(
        functools.partial(kmeans_family.squared_distances, params), X))


_nearest = precision.jit(
    lambda params, X: blocks.map_row_blocks(
        functools.partial(kmeans_family.nearest_centres, params), X))
