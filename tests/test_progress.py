"""Progress: a bar on a terminal, at most a line per tenth (no carriage returns) in a log."""
import io

import numpy as np

from batchal._progress import LineProgress, progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_per_tenth_and_no_carriage_returns():
    log = io.StringIO()
    with progress(1_000_000, "kNN", unit="rows", file=log) as bar:
        assert isinstance(bar, LineProgress)
        bar.quiet_seconds = 0.0
        for _ in range(10_000):
            bar.update(100)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10 and lines[0].startswith("kNN: 10% (100,000 / 1,000,000 rows")
    assert lines[-1].startswith("kNN: 100%")


def test_a_fast_stage_is_one_line_and_a_short_one_says_done():
    log = io.StringIO()
    with progress(50, "coreset", unit="picks", file=log) as bar:
        bar.update(20)  # stops short, and too fast for running commentary
    assert len(log.getvalue().splitlines()) == 1
    assert log.getvalue().startswith("coreset: done (20 / 50 picks")


def test_a_terminal_gets_a_bar_and_disabled_prints_nothing():
    tty = _Tty()
    bar = progress(10, "x", file=tty)
    assert type(bar).__module__.startswith("tqdm")
    bar.close()
    quiet = io.StringIO()
    with progress(10, "x", enabled=False, file=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_a_clustering_run_logged_to_a_file_stays_small(capfd):
    from batchal import AverageLinkage

    X = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
    AverageLinkage(method="graph", knn=10, progress=True).fit(X)
    err = capfd.readouterr().err  # pytest's capture is a file, not a terminal
    assert "\r" not in err and len(err.splitlines()) <= 11 * 3, err
