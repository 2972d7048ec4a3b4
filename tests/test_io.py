import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchal import BatchalInputError
from batchal._validation import check_ids
from batchal.io import TMP_TAG, atomic_write, load_array, save_indices


def test_npy_is_memory_mapped(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12.0).reshape(4, 3))
    a = load_array(tmp_path / "a.npy")
    assert isinstance(a, np.memmap)


def test_parquet_list_and_numeric_columns(tmp_path):
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    pq.write_table(pa.table({"e": pa.array(list(emb), type=pa.list_(pa.float32(), 3))}), tmp_path / "e.parquet")
    np.testing.assert_array_equal(load_array(tmp_path / "e.parquet"), emb)
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]}), tmp_path / "ab.parquet")
    np.testing.assert_array_equal(load_array(tmp_path / "ab.parquet"), [[1, 3], [2, 4]])
    pq.write_table(pa.table({"c": [5, 6, 7]}), tmp_path / "c.parquet")
    np.testing.assert_array_equal(load_array(tmp_path / "c.parquet"), [5, 6, 7])


def test_unreadable_and_unknown_files(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    with pytest.raises(BatchalInputError, match="not a .npy file"):
        load_array(tmp_path / "x.npy")
    (tmp_path / "x.h5").write_bytes(b"")
    with pytest.raises(BatchalInputError, match="unsupported"):
        load_array(tmp_path / "x.h5")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def boom(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.npy", boom)
    assert list(tmp_path.iterdir()) == []


def test_save_indices_csv_with_ids(tmp_path):
    save_indices(tmp_path / "o.csv", np.array([2, 0]), ids=np.array(["a", "b", "c"]))
    assert (tmp_path / "o.csv").read_text().splitlines() == ["index,id", "2,c", "0,a"]


def test_duplicate_ids_rejected():
    with pytest.raises(BatchalInputError, match="not unique"):
        check_ids(np.array(["a", "b", "a"]))


def test_ragged_parquet_list_rows_are_refused(tmp_path):
    # 4 values over 2 rows divide evenly, but [[1, 2, 3], [4]] must not become [[1, 2], [3, 4]]
    pq.write_table(pa.table({"e": pa.array([[1.0, 2.0, 3.0], [4.0]])}), tmp_path / "r.parquet")
    with pytest.raises(BatchalInputError, match=r"--embeddings: list column .* unequal length .*row 1 has 1"):
        load_array(tmp_path / "r.parquet", name="--embeddings")
    pq.write_table(pa.table({"e": pa.array([[1.0, 2.0], None])}), tmp_path / "n.parquet")
    with pytest.raises(BatchalInputError, match="missing"):
        load_array(tmp_path / "n.parquet")
    pq.write_table(pa.table({"e": pa.array([[1.0, 2.0], [3.0, 4.0]])}), tmp_path / "ok.parquet")
    np.testing.assert_array_equal(load_array(tmp_path / "ok.parquet"), [[1, 2], [3, 4]])


def test_batchal_csv_outputs_read_back(tmp_path):
    # a cluster file (header "cluster") and a batch file (header "index,id") are inputs of the next step
    np.savetxt(tmp_path / "C.csv", np.array([3, 1, 2]), fmt="%d", header="cluster", comments="")
    c = load_array(tmp_path / "C.csv")
    assert c.dtype == np.int64 and c.tolist() == [3, 1, 2]
    save_indices(tmp_path / "b.csv", np.array([2, 0]), ids=np.array(["x", "y", "z"]))
    assert load_array(tmp_path / "b.csv").tolist() == [2, 0]
    (tmp_path / "P.csv").write_text("p0,p1\n0.25,0.75\n1,0\n")
    np.testing.assert_array_equal(load_array(tmp_path / "P.csv"), [[0.25, 0.75], [1, 0]])
    (tmp_path / "ids.csv").write_text("id\nfoo\nbar\n")
    assert load_array(tmp_path / "ids.csv", text=True).tolist() == ["foo", "bar"]
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(BatchalInputError, match="empty"):
        load_array(tmp_path / "e.csv", name="--labeled")


@pytest.mark.parametrize("content, msg", [
    (b"hello", "not a .npy file"),
    (None, "truncated"),
    ("object", "Python objects"),
])
def test_bad_npy_files_say_what_is_wrong(tmp_path, content, msg):
    f = tmp_path / "T.npy"
    if content is None:
        np.save(f, np.zeros((50, 4)))
        f.write_bytes(f.read_bytes()[:200])
    elif content == "object":
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        f.write_bytes(content)
    with pytest.raises(BatchalInputError, match=f"--tree: .*T.npy.*{msg}|--tree: .*{msg}"):
        load_array(f, name="--tree")
    (tmp_path / "D.npy").mkdir()
    with pytest.raises(BatchalInputError, match="is a directory"):
        load_array(tmp_path / "D.npy", name="--tree")


def test_check_output_refuses_unwritable_paths(tmp_path):
    from batchal.io import check_output

    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.npy").mkdir()
    cases = [(tmp_path / "file" / "C.npy", "not a directory"), (tmp_path / "file" / "a" / "C.npy", "not a directory"),
             (tmp_path / "dir.npy", "is a directory"), ("/proc/C.npy", "does not accept new files"),
             (tmp_path / "C.txt", "must end in")]
    for path, msg in cases:
        with pytest.raises(OSError, match=msg):  # BatchalOutputError is an OSError and a BatchalInputError
            check_output(path, name="--out", suffixes=(".npy", ".csv"))
    assert check_output(tmp_path / "new" / "deeper" / "C.npy", suffixes=(".npy",)).name == "C.npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npy", "file"]  # the probe left nothing
    with pytest.raises(BatchalInputError, match="not a directory"):
        check_output(tmp_path / "file", directory=True)


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.npy", lambda t: np.save(t, np.arange(3)))
        save_indices(tmp_path / "b.csv", np.array([1]))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.npy").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "b.csv").st_mode) == 0o640


def test_a_killed_writer_leaves_a_temp_that_the_next_write_removes(tmp_path):
    code = ("import time, numpy as np; from batchal.io import atomic_write\n"
            "def w(t):\n    np.save(t, np.arange(10)); print('writing', flush=True); time.sleep(60)\n"
            f"atomic_write({str(tmp_path / 'C.npy')!r}, w)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and TMP_TAG in left[0] and not (tmp_path / "C.npy").exists()
    atomic_write(tmp_path / "D.npy", lambda t: np.save(t, np.arange(2)))
    assert [p.name for p in tmp_path.iterdir()] == ["D.npy"]


def test_a_live_writers_temp_is_left_alone(tmp_path):
    from batchal.io import clean_stale_temps

    from batchal.io import _HOST

    live = tmp_path / f".C.npy{TMP_TAG}-{_HOST}-{os.getppid()}-abcdefgh.npy"  # the parent runs, started earlier
    dead = tmp_path / f".C.npy{TMP_TAG}-{_HOST}-{2**22 + 12345}-abcdefgh.npy"  # beyond any pid_max
    remote = tmp_path / f".C.npy{TMP_TAG}-{'0' if _HOST[0] != '0' else '1'}{_HOST[1:]}-{2**22 + 1}-abcdefgh.npy"
    for f in (live, dead, remote):
        f.write_bytes(b"x")
        os.utime(f, (0, time.time() - 5))
    assert clean_stale_temps(tmp_path) == [dead]
    assert live.exists() and remote.exists()  # another host's writer cannot be checked: kept for a day
    os.utime(remote, (0, time.time() - 2 * 24 * 3600))
    assert clean_stale_temps(tmp_path) == [remote]


def test_atomic_directory_is_all_or_nothing(tmp_path):
    from batchal.io import atomic_directory

    out = tmp_path / "sim"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as stage:
            (stage / "a.csv").write_text("1")
            raise RuntimeError("plot failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(out) as stage:
        (stage / "a.csv").write_text("1")
        (stage / "b.md").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.md"]
    with atomic_directory(out) as stage:  # into an existing folder: files replaced, others kept
        (stage / "a.csv").write_text("3")
    assert (out / "a.csv").read_text() == "3" and (out / "b.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim"]
