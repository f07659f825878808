"""Every plot of jaxem.plot renders to a valid, non-empty PNG."""

from __future__ import annotations

import numpy as np
import pytest

import jaxem as jem
from jaxem import plot
from jaxem.datasets import load_old_faithful

matplotlib_image = pytest.importorskip("matplotlib.image")  # the 'plot' extra; in the test extra

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(fig, path, min_size=(200, 300)):
    """Save ``fig`` to ``path`` and check it is a PNG of at least ``min_size`` pixels, not blank."""
    fig.savefig(path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000
    pixels = matplotlib_image.imread(path)
    assert pixels.shape[0] >= min_size[0] and pixels.shape[1] >= min_size[1]
    assert pixels[..., :3].std() > 0.01  # something was drawn


class Labelled:
    """A stand-in for a fitted non-Gaussian mixture: ``predict`` and ``n_components`` only."""

    def __init__(self, labels, k):
        self.labels, self.n_components = labels, k

    def predict(self, X):
        return self.labels


@pytest.fixture(scope="module")
def faithful_fit():
    X, names = load_old_faithful()
    return jem.GaussianMixture(2, n_restarts=3, max_iter=50, random_state=0).fit(X), X, names


def test_learning_curve_one_line_per_restart_best_highlighted(faithful_fit, tmp_path):
    gm, _, _ = faithful_fit
    fig = plot.plot_learning_curve(gm)
    ax = fig.axes[0]
    # the best restart drawn in bold on top of the others, each from its initial value
    assert len(ax.lines) == gm.fit_result_.history.shape[0]
    best = ax.lines[-1]
    assert best.get_linewidth() > ax.lines[0].get_linewidth()
    assert f"restart {gm.fit_result_.best_restart}" in best.get_label()
    y = np.asarray(best.get_ydata())
    assert y[0] == pytest.approx(gm.fit_result_.initial_log_likelihood[gm.fit_result_.best_restart])
    assert np.nanmax(y) == pytest.approx(gm.fit_result_.log_likelihood)
    assert_png(fig, tmp_path / "curve.png")
    # a bare history [R, T] with NaN after stopping works too
    history = np.array([[1.0, 2.0, 2.5, np.nan], [0.5, 1.0, 1.2, 1.3]])
    assert_png(plot.plot_learning_curve(history), tmp_path / "history.png")


def test_clusters_with_gaussian_ellipses(faithful_fit, tmp_path):
    gm, X, names = faithful_fit
    fig = plot.plot_clusters(gm, X, feature_names=names)
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # one ellipse per component
    centres = sorted(tuple(p.center) for p in ax.patches)
    assert np.allclose(centres, sorted(map(tuple, gm.means_)), atol=1e-6)
    assert ax.get_xlabel() == "eruptions"
    assert_png(fig, tmp_path / "clusters.png")


def test_clusters_of_other_families_are_hard_assignments(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0, size=(100, 3)).astype(float)
    labels = (X[:, 0] > 3).astype(int)
    fig = plot.plot_clusters(Labelled(labels, 2), X, features=(1, 2))
    assert len(fig.axes[0].patches) == 0  # no ellipses without covariances
    assert_png(fig, tmp_path / "hard.png")
    one_d = plot.plot_clusters(Labelled(labels, 2), X[:, :1])  # 1-D: histogram by component
    assert len(one_d.axes[0].patches) > 0
    assert_png(one_d, tmp_path / "hist.png")


def test_states_under_the_data(tmp_path):
    rng = np.random.default_rng(0)
    states = np.repeat([0, 2, 1, 0, 2], 40)
    X = rng.normal(np.array([-3.0, 0.0, 3.0])[states], 0.5)[:, None]
    fig = plot.plot_states(X, states, feature_names=["level"])
    top, bottom = fig.axes
    assert top.get_position().y0 > bottom.get_position().y0  # the states are drawn under the data
    assert np.array_equal(bottom.lines[0].get_ydata(), states)
    assert_png(fig, tmp_path / "states.png")
    with pytest.raises(ValueError, match="states must have shape"):
        plot.plot_states(X, states[:-1])


def test_fit_overview(faithful_fit, tmp_path):
    gm, X, names = faithful_fit
    fig = plot.plot_fit(gm, X, feature_names=names)
    assert len(fig.axes) == 2
    assert_png(fig, tmp_path / "fit.png", min_size=(300, 600))


def test_without_matplotlib_the_error_says_how_to_install(monkeypatch):
    import sys

    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'jaxem\[plot\]'"):
        plot.plot_learning_curve(np.zeros((1, 3)))


def test_hmm_fit_overview_shows_the_decoded_states(tmp_path):
    from jaxem.hmm import GaussianHMM

    rng = np.random.default_rng(1)
    states = np.repeat([0, 1, 0, 1], 30)
    X = rng.normal(np.array([-2.0, 2.0])[states], 0.5)[:, None]
    hmm = GaussianHMM(2, n_iter=20, random_state=0).fit(X)
    fig = plot.plot_fit(hmm, X, feature_names=["level"])
    curve, top, bottom = fig.axes
    decoded = bottom.lines[0].get_ydata()
    assert np.array_equal(decoded, hmm.predict(X))
    # the two regimes are told apart (up to relabelling)
    assert max(np.mean(decoded == states), np.mean(decoded != states)) > 0.95
    assert_png(fig, tmp_path / "hmm.png", min_size=(300, 600))
