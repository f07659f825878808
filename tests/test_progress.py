"""The progress bar (jaxem.progress): what it shows, when it shows, and its contract with fit."""

from __future__ import annotations

import io
import sys

import jax
import numpy as np
import pytest

import jaxem as jem
from jaxem.progress import ProgressBar, progress_bar


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self):
        return True


def feed(bar, n_iter=5, n_restarts=3):
    for it in range(1, n_iter + 1):
        ll = np.array([-100.0 + it, -90.0 + it, np.nan])[:n_restarts]
        converged = np.arange(n_restarts) < min(it, 2)
        bar(it, ll, converged, ~converged)


@pytest.mark.parametrize("use_tqdm", [True, False])
def test_bar_shows_iterations_best_log_likelihood_and_restarts_converged(use_tqdm):
    stream = Terminal()
    with ProgressBar(10, stream=stream, delay=0.0, min_interval=0.0, use_tqdm=use_tqdm) as bar:
        feed(bar)
    lines = stream.getvalue().replace("\r", "\n").strip().splitlines()
    assert any("4/10" in line for line in lines)  # while running: out of max_iter
    final = lines[-1]  # every restart stopped after 5 iterations: the bar ends full
    assert "5/5" in final and "best log-lik -85" in final and "converged 2/3" in final
    text = stream.getvalue()
    assert text.endswith("\n")  # the line is ended, the next output starts on its own line
    assert bar.last == (5, -85.0, 2, 3)


@pytest.mark.parametrize("use_tqdm", [True, False])
def test_quick_fits_print_nothing(use_tqdm):
    stream = Terminal()
    with ProgressBar(10, stream=stream, delay=60.0, use_tqdm=use_tqdm) as bar:
        feed(bar)
    assert stream.getvalue() == ""


def test_off_when_verbose_is_0_or_the_stream_is_not_a_terminal():
    with progress_bar(0, 10, stream=Terminal()) as bar:
        assert bar is None
    with progress_bar(1, 10, stream=io.StringIO()) as bar:  # e.g. output redirected to a file
        assert bar is None
    with progress_bar(1, 10, stream=Terminal()) as bar:
        assert isinstance(bar, ProgressBar)
    with progress_bar(2, 10, stream=io.StringIO()) as bar:  # forced, for logs
        assert isinstance(bar, ProgressBar)


def test_plain_line_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    stream = Terminal()
    with progress_bar(1, 10, stream=stream, delay=0.0) as bar:
        feed(bar)
    lines = stream.getvalue().replace("\r", "\n").strip().splitlines()
    assert lines[-1].startswith("EM: [####################] 5/5 it")
    with pytest.raises(ImportError, match="jaxem\\[progress\\]"):
        ProgressBar(10, use_tqdm=True)


def test_fit_reports_every_iteration_to_the_bar(x64, monkeypatch):
    # Wide enough for the whole postfix: iterations reported a segment at a time show rates of
    # thousands per second, whose digits cut the summary short at 100 columns.
    monkeypatch.setenv("COLUMNS", "240")
    rng = np.random.default_rng(0)
    X = rng.binomial(1, np.where(rng.random(200)[:, None] < 0.5, 0.2, 0.8), size=(200, 4))
    calls = []

    class Recording(ProgressBar):
        def __call__(self, iteration, log_likelihood, converged, running=None):
            calls.append((iteration, np.array(log_likelihood), np.array(converged)))
            super().__call__(iteration, log_likelihood, converged, running)

    stream = Terminal()
    with Recording(30, stream=stream, delay=0.0, min_interval=0.0) as bar:
        result = jem.fit(jem.bernoulli_mixture(2), X, key=jax.random.key(0), n_restarts=3,
                         max_iter=30, progress=bar)
    assert [c[0] for c in calls] == list(range(1, int(result.n_iter.max()) + 1))
    last_ll, last_converged = calls[-1][1], calls[-1][2]
    assert np.array_equal(last_converged, result.converged)
    assert np.allclose(last_ll, result.all_log_likelihoods)
    assert bar.last[1] == pytest.approx(result.log_likelihood)
    assert f"converged {int(result.converged.sum())}/3" in stream.getvalue()
