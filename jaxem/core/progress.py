"""A progress bar for :func:`jaxem.fit`: iterations done, best log-likelihood, restarts converged.

:func:`jaxem.fit` accepts ``progress=callback``, called once per EM iteration from inside the
compiled loop as ``callback(iteration, log_likelihood [R], converged [R], running [R])``.
:class:`ProgressBar` is such a callback. It draws with tqdm when it is installed (``pip install
'jaxem[progress]'``) and as one plain line rewritten in place otherwise; either way it appears only
once a fit has run for ``delay`` seconds, so quick fits print nothing. :func:`progress_bar` decides
whether to show one at all (``verbose`` and whether the stream is a terminal)::

    with jem.progress.progress_bar(verbose=1, max_iter=200) as bar:
        result = jem.fit(model, X, key=key, n_restarts=16, max_iter=200, progress=bar)

Each call does a few NumPy reductions over ``[R]`` and redraws at most every ``min_interval``
seconds, so the bar costs microseconds per iteration on top of the engine's host callback.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator

import numpy as np

__all__ = ["ProgressBar", "progress_bar"]


def _tqdm_class():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class ProgressBar:
    """A ``progress`` callback for :func:`jaxem.fit` that draws a bar on ``stream``.

    Args:
        max_iter: the fit's ``max_iter`` (the bar's length).
        stream: where to draw (default ``sys.stderr``).
        desc: label in front of the bar.
        delay: seconds to wait before drawing anything (a fit that ends sooner prints nothing).
        min_interval: the fewest seconds between redraws.
        use_tqdm: ``None`` (tqdm when installed), ``True`` or ``False`` (the plain line).

    Call it as ``bar(iteration, log_likelihood [R], converged [R], running [R])``; ``close()`` (or
    leaving a ``with`` block) ends the line. ``last`` holds the latest ``(iteration, best
    log-likelihood, n_converged, n_restarts)``.
    """

    def __init__(self, max_iter: int, *, stream=None, desc: str = "EM", delay: float = 1.0,
                 min_interval: float = 0.1, use_tqdm: bool | None = None):
        self.max_iter = int(max_iter)
        self.stream = sys.stderr if stream is None else stream
        self.desc = desc
        self.delay = float(delay)
        self.min_interval = float(min_interval)
        self._tqdm_class = _tqdm_class() if use_tqdm in (None, True) else None
        if use_tqdm and self._tqdm_class is None:
            raise ImportError("use_tqdm=True needs tqdm: pip install 'jaxem[progress]'")
        self._tqdm = None
        self._start = None  # the first iteration, so compile time counts neither to delay nor rate
        self._last_draw = -np.inf
        self._drawn = False
        self.last: tuple[int, float, int, int] | None = None

    def _summary(self) -> str:
        _, best, n_conv, n_restarts = self.last
        return f"best log-lik {best:.6g}, converged {n_conv}/{n_restarts}"

    def __call__(self, iteration, log_likelihood, converged, running=None) -> None:
        """Record one EM iteration: ``iteration`` (int), ``log_likelihood``/``converged`` ``[R]``."""
        ll = np.asarray(log_likelihood)
        finite = ll[np.isfinite(ll)]
        best = float(finite.max()) if finite.size else float("nan")
        self.last = (int(iteration), best, int(np.sum(converged)), int(ll.size))
        if self._start is None:
            self._start = time.perf_counter()
            if self._tqdm_class is not None:
                # tqdm hides its bar on a terminal that reports a size of 0 x 0 (some ptys)
                size = shutil.get_terminal_size((100, 24))
                self._tqdm = self._tqdm_class(
                    total=self.max_iter, desc=self.desc, unit="it", file=self.stream,
                    delay=self.delay, mininterval=self.min_interval, leave=True,
                    ncols=size.columns, nrows=size.lines)
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(self._summary(), refresh=False)
            self._tqdm.update(self.last[0] - self._tqdm.n)
            return
        now = time.perf_counter()
        if now - self._start >= self.delay and now - self._last_draw >= self.min_interval:
            self._draw()
            self._last_draw = now

    def _draw(self) -> None:
        iteration = self.last[0]
        width = 20
        filled = int(width * min(iteration, self.max_iter) / max(self.max_iter, 1))
        line = (f"{self.desc}: [{'#' * filled}{'.' * (width - filled)}] {iteration}/{self.max_iter} "
                f"it, {self._summary()}, {time.perf_counter() - self._start:.1f} s")
        self.stream.write("\r" + line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Draw the final state (if the bar is showing) and end its line."""
        if self.last is not None and self.last[0] < self.max_iter:
            self.max_iter = self.last[0]  # every restart stopped early: end on a full bar
        if self._tqdm is not None:
            if time.perf_counter() - self._start >= self.delay:  # only if it is showing
                self._tqdm.total = self.max_iter
                self._tqdm.refresh()
            self._tqdm.close()
            return
        if self._drawn:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress_bar(verbose: int, max_iter: int, *, stream=None, desc: str = "EM",
                 delay: float = 1.0) -> Iterator[ProgressBar | None]:
    """A :class:`ProgressBar` for one fit, or ``None`` where none should show.

    Args:
        verbose: ``0`` never shows a bar; ``1`` shows one when ``stream`` is a terminal; ``2`` or
            more always does (for logs).
        max_iter: the fit's ``max_iter``.
        stream: where to draw (default ``sys.stderr``).
        desc: label in front of the bar.
        delay: seconds before the bar appears.

    Yields:
        The bar (pass it as ``progress=`` to :func:`jaxem.fit`), or ``None`` (no callback, so the
        fit runs the program compiled without one). The bar is closed when the block ends.
    """
    stream = sys.stderr if stream is None else stream
    if not verbose or (verbose == 1 and not _is_terminal(stream)):
        yield None
        return
    bar = ProgressBar(max_iter, stream=stream, desc=desc, delay=delay)
    try:
        yield bar
    finally:
        bar.close()
