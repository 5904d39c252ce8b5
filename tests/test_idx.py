"""IDX files, MNIST's format (idx.py): reading, writing, and a failed write that leaves the old file."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from mnistlab.idx import read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    path = tmp_path / f"x{suffix}"
    write_idx(path, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_read_idx_decodes_the_published_layout(tmp_path):
    # magic 0x00000C02 (int32, 2 dims), dims 2 and 2, values big-endian
    (tmp_path / "x").write_bytes(
        bytes([0, 0, 0x0C, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + np.array([1, -2, 3, 70000], dtype=">i4").tobytes()
    )
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), [[1, -2], [3, 70000]])


def test_read_idx_accepts_gzip_without_gz_suffix(tmp_path):
    write_idx(tmp_path / "labels.gz", np.array([7, 8], np.uint8))
    (tmp_path / "labels.gz").rename(tmp_path / "labels")
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), [7, 8])


def test_failed_idx_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "labels.gz"
    write_idx(path, np.array([1, 2, 3], np.uint8))
    before = path.read_bytes()

    def write_then_fail(self, data):
        gzip.GzipFile.write.__wrapped__(self, data[:5])
        raise OSError(28, "No space left on device")

    write_then_fail.__wrapped__ = gzip.GzipFile.write
    monkeypatch.setattr(gzip.GzipFile, "write", write_then_fail)
    from mnistlab.fileio import DiskFull

    with pytest.raises(DiskFull, match=f"no space left on device writing {path}"):  # one line, a UserError
        write_idx(path, np.array([4, 5, 6], np.uint8))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["labels.gz"]
