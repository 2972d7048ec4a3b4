"""Progress reporting that suits where it goes: a bar on a terminal, a few lines in a log.

A tqdm bar redraws itself with carriage returns; sent to a file or a pipe every
redraw stays, and a long run fills its log with them. When stderr is not a
terminal, :func:`progress` reports one line at each tenth of the work instead.
"""
from __future__ import annotations

import sys
import time

__all__ = ["progress", "LineProgress"]


class LineProgress:
    """The part of tqdm's interface batchal uses (``update``, ``close``, a context), as log lines.

    Prints ``desc: 30% (300 / 1,000 rows, 1.2 s)`` when each tenth is crossed once
    the stage has run ``quiet_seconds`` (a fast stage needs no running commentary),
    and ``desc: done (...)`` at the end unless 100% was printed: one line per stage
    at least, eleven at most.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", file=None, steps: int = 10,
                 quiet_seconds: float = 1.0):
        self.total, self.desc, self.unit, self.steps = max(0, int(total)), desc, unit, steps
        self.quiet_seconds = quiet_seconds
        self.file = file if file is not None else sys.stderr
        self.n = 0
        self._next = 1  # the next tenth to report
        self._t0 = time.perf_counter()
        self._closed = False
        self._done = False

    def _line(self, what: str) -> None:
        self.file.write(f"{self.desc}: {what} ({self.n:,} / {self.total:,} {self.unit}, "
                        f"{time.perf_counter() - self._t0:.1f} s)\n")
        self.file.flush()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        reached = self.steps * self.n // self.total
        if reached >= self._next:
            self._next = reached + 1
            if time.perf_counter() - self._t0 >= self.quiet_seconds:
                self._done = reached >= self.steps
                self._line(f"{min(100, 100 * reached // self.steps)}%")

    def close(self) -> None:
        if not self._closed and not self._done:
            self._line("done")
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def progress(total: int, desc: str, *, enabled: bool = True, unit: str = "it", file=None):
    """A progress reporter over ``total`` units: a tqdm bar on a terminal, lines per 10% elsewhere.

    Parameters
    ----------
    total : int
    desc : str
        What is being done (starts each line).
    enabled : bool
        False gives a reporter that prints nothing.
    unit : str
    file : stream, default ``sys.stderr``

    Returns
    -------
    An object with ``update(n)``, ``close()`` and the context-manager protocol.
    """
    if not enabled:
        return _Silent()
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if (isatty is not None and isatty()) or "ipykernel" in sys.modules:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=0.5, file=stream)
    return LineProgress(total, desc, unit, stream)
