"""Sets of output files: all or nothing, with the umask's permissions."""
import os
import stat

import pytest

from batchal.simulate import SimulationConfig, load_dataset, simulate
from batchal.simulate import report as sim_report


@pytest.fixture(scope="module")
def small_result():
    ds = load_dataset("blobs", size=400)
    cfg = SimulationConfig(strategies=["margin", "random"], seed_size=20, batch_size=20, rounds=2, trials=1,
                           n_jobs=1, progress=False)
    return simulate(ds, cfg)


def test_a_failing_output_leaves_no_partial_folder(tmp_path, small_result, monkeypatch):
    def boom(res):
        raise ZeroDivisionError("summary failed")

    monkeypatch.setattr(sim_report, "summary_markdown", boom)
    with pytest.raises(ZeroDivisionError):
        sim_report.write_outputs(small_result, tmp_path / "sim")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staging leftover


def test_a_failing_rerun_keeps_the_previous_outputs(tmp_path, small_result, monkeypatch):
    sim_report.write_outputs(small_result, tmp_path / "sim")
    before = {p.name: p.read_bytes() for p in (tmp_path / "sim").iterdir()}
    assert {"results.csv", "summary.md", "curves.png", "run.json"} <= set(before)
    monkeypatch.setattr(sim_report, "summary_markdown", lambda res: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        sim_report.write_outputs(small_result, tmp_path / "sim")
    assert {p.name: p.read_bytes() for p in (tmp_path / "sim").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["sim"]


def test_simulation_outputs_respect_the_umask(tmp_path, small_result):
    old = os.umask(0o027)
    try:
        sim_report.write_outputs(small_result, tmp_path / "sim")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "sim").iterdir()}
    assert set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE((tmp_path / "sim").stat().st_mode) == 0o750
