"""Pictures of a fit (matplotlib, an optional extra: ``pip install 'jaxem[plot]'``).

Every function returns a ``matplotlib.figure.Figure`` (built without pyplot, so it works without a
display and leaves no global state); save it with ``fig.savefig("fit.png")``. Passing ``ax`` draws
into an existing axes instead and returns its figure.

- :func:`plot_learning_curve`: log-likelihood per EM iteration, one line per restart, best in bold.
- :func:`plot_clusters`: 2-D data coloured by hard assignment, with 2-sigma ellipses for Gaussian
  mixtures (a stacked histogram for 1-D data).
- :func:`plot_states`: a sequence with the decoded (Viterbi) state path drawn under it, for HMMs.
- :func:`plot_fit`: the learning curve beside the clusters (mixtures) or above the states (HMMs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["plot_clusters", "plot_fit", "plot_learning_curve", "plot_states"]


def _figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'jaxem[plot]'") from None
    return Figure(figsize=figsize, layout="constrained")


def _axes(ax, figsize=(6, 4)):
    return _figure(figsize).subplots() if ax is None else ax


def _color(k: int) -> str:
    return f"C{k % 10}"


def _is_hmm(estimator) -> bool:
    return hasattr(estimator, "transmat_")


def plot_learning_curve(fit, *, ax=None, title: str | None = None):
    """Log-likelihood per EM iteration, one line per restart, the best one highlighted.

    Args:
        fit: a :class:`jaxem.FitResult`, an estimator fitted by jaxem (its ``fit_result_``), or a
            history array ``[R, T]`` (NaN after a restart stopped).
        ax: optional matplotlib axes to draw into.
        title: optional title.

    Returns:
        The ``Figure``.
    """
    result = getattr(fit, "fit_result_", fit)
    history = np.atleast_2d(np.asarray(getattr(result, "history", result), dtype=np.float64))
    initial = getattr(result, "initial_log_likelihood", None)
    if initial is not None:  # iteration 0 is the initial parameters
        history = np.concatenate([np.asarray(initial, np.float64)[:, None], history], axis=1)
    last = np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else -np.inf
                     for row in history])
    best = int(getattr(result, "best_restart", np.argmax(last)))
    ax = _axes(ax)
    steps = np.arange(history.shape[1]) + (0 if initial is not None else 1)
    for r, row in enumerate(history):
        if r != best:
            ax.plot(steps, row, color="0.6", lw=1, alpha=0.8,
                    label="other restarts" if r == (1 if best == 0 else 0) else None)
    ax.plot(steps, history[best], color="C3", lw=2.5, label=f"best (restart {best})")
    finite = history[np.isfinite(history)]
    if finite.size:  # the first iterations dwarf the end otherwise: show the top of the climb
        top, spread = finite.max(), np.percentile(finite, 90) - np.percentile(finite, 10)
        low = max(finite.min(), np.percentile(finite, 5) - 0.05 * spread)
        ax.set_ylim(low, top + 0.05 * max(top - low, 1e-12))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("log-likelihood")
    ax.set_title(title or f"Learning curve ({history.shape[0]} restarts)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure


def _full_covariances(estimator, d: int) -> np.ndarray | None:
    """``[K, d, d]`` covariances of a Gaussian mixture whatever its covariance type, else None."""
    cov = getattr(estimator, "covariances_", None)
    kind = getattr(estimator, "covariance_type", None)
    if cov is None or kind is None:
        return None
    cov, k = np.asarray(cov, np.float64), estimator.n_components
    if kind == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if kind == "diag":
        return cov[:, :, None] * np.eye(d)
    if kind == "spherical":
        return cov[:, None, None] * np.eye(d)
    return cov


def plot_clusters(estimator, X, *, features: Sequence[int] = (0, 1),
                  feature_names: Sequence[str] | None = None, ax=None, title: str | None = None):
    """Data coloured by each row's most probable component, with 2-sigma ellipses for Gaussians.

    Args:
        estimator: a fitted mixture estimator (``predict``; ``means_`` and ``covariances_`` give
            ellipses).
        X: the data ``[N, D]``; with ``D >= 2`` the two columns ``features`` are drawn (ellipses
            are the marginal covariances of those columns), with ``D == 1`` a histogram stacked by
            component.
        features: the two column indices to draw.
        feature_names: names of all ``D`` columns (axis labels).
        ax: optional matplotlib axes.
        title: optional title.

    Returns:
        The ``Figure``.
    """
    X = np.asarray(X, np.float64)
    X = X.reshape(-1, 1) if X.ndim == 1 else X
    labels = np.asarray(estimator.predict(X))
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(X.shape[1])]
    k = int(estimator.n_components)
    ax = _axes(ax)
    if X.shape[1] == 1:
        parts = [X[labels == c, 0] for c in range(k)]
        ax.hist(parts, bins=30, stacked=True, color=[_color(c) for c in range(k)],
                label=[f"component {c}" for c in range(k)])
        ax.set_xlabel(names[0])
        ax.set_ylabel("rows")
        ax.legend(fontsize=8)
    else:
        i, j = (int(f) for f in features)
        ax.scatter(X[:, i], X[:, j], s=8, c=[_color(c) for c in labels], alpha=0.7)
        means = getattr(estimator, "means_", None)
        covs = _full_covariances(estimator, X.shape[1])
        if means is not None and covs is not None:
            from matplotlib.patches import Ellipse

            for c, (mean, cov) in enumerate(zip(np.asarray(means, np.float64), covs, strict=True)):
                sub = cov[np.ix_([i, j], [i, j])]
                eigvals, eigvecs = np.linalg.eigh(sub)
                angle = np.degrees(np.arctan2(eigvecs[1, -1], eigvecs[0, -1]))
                width, height = 4 * np.sqrt(np.maximum(eigvals[::-1], 0.0))  # 2 sigma each side
                ax.add_patch(Ellipse((mean[i], mean[j]), width, height, angle=angle, fill=False,
                                     lw=2, color=_color(c)))
                ax.plot(mean[i], mean[j], marker="x", color="black")
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
    ax.set_title(title or f"{type(estimator).__name__}, K={k}: hard assignments"
                 + (", 2-sigma ellipses" if _full_covariances(estimator, X.shape[1]) is not None
                    else ""), fontsize=10)
    return ax.figure


def plot_states(X, states, *, n_states: int | None = None,
                feature_names: Sequence[str] | None = None, fig=None, title: str | None = None):
    """A sequence ``X`` with its decoded state path drawn under it on the same time axis.

    Args:
        X: observations ``[T, D]`` (or ``[T]``), one line per feature.
        states: the state of each step ``[T]`` (e.g. ``GaussianHMM.predict(X)``).
        n_states: number of states ``K`` (default: ``max(states) + 1``).
        feature_names: names of the ``D`` features (legend).
        fig: optional ``Figure`` to draw into (two axes are added).
        title: optional title.

    Returns:
        The ``Figure``.
    """
    X = np.asarray(X, np.float64)
    X = X.reshape(-1, 1) if X.ndim == 1 else X
    states = np.asarray(states).astype(int)
    if states.shape != (X.shape[0],):
        raise ValueError(f"states must have shape ({X.shape[0]},) to match X, got {states.shape}")
    k = int(n_states if n_states is not None else states.max() + 1)
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(X.shape[1])]
    fig = _figure((8, 4.5)) if fig is None else fig
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    t = np.arange(X.shape[0])
    for j in range(X.shape[1]):
        top.plot(t, X[:, j], lw=0.8, label=names[j])
    # shade each run of one state behind the data, in that state's colour
    change = np.flatnonzero(np.diff(states)) + 1
    for start, stop in zip(np.r_[0, change], np.r_[change, len(states)], strict=True):
        top.axvspan(start - 0.5, stop - 0.5, color=_color(states[start]), alpha=0.12, lw=0)
    if X.shape[1] <= 6:
        top.legend(fontsize=8, loc="upper right")
    top.set_ylabel("observation")
    top.set_title(title or f"Decoded state sequence (K={k})", fontsize=10)
    bottom.step(t, states, where="mid", color="black", lw=1)
    bottom.scatter(t, states, c=[_color(s) for s in states], s=6, zorder=3)
    bottom.set_yticks(range(k))
    bottom.set_ylim(-0.5, k - 0.5)
    bottom.set_ylabel("state")
    bottom.set_xlabel("step")
    return fig


def plot_fit(estimator, X, *, feature_names: Sequence[str] | None = None, lengths=None):
    """Overview of a fitted estimator: learning curve plus clusters (mixtures) or states (HMMs).

    Args:
        estimator: a fitted jaxem estimator.
        X: the data it was fitted to ``[N, D]``.
        feature_names: names of the ``D`` columns.
        lengths: sequence lengths for an HMM (``None``: one sequence).

    Returns:
        The ``Figure``.
    """
    fig = _figure((11, 4.5))
    left, right = fig.subfigures(1, 2, width_ratios=[2, 3])
    plot_learning_curve(estimator, ax=left.subplots())
    if _is_hmm(estimator):
        plot_states(X, estimator.predict(X, lengths), n_states=estimator.n_components,
                    feature_names=feature_names, fig=right)
    else:
        plot_clusters(estimator, X, feature_names=feature_names, ax=right.subplots())
    return fig
