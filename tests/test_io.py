import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchal import BatchalInputError
from batchal._validation import check_ids
from batchal.io import atomic_write, load_array, save_indices


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
    with pytest.raises(BatchalInputError, match="cannot read"):
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
