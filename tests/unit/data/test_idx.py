from __future__ import annotations

import gzip

import numpy as np
import pytest

from mtlcli.data.idx import read_idx, write_idx
from mtlcli.errors import DataError

IMAGES = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_plain_and_gzip(tmp_path, compress) -> None:
    path = tmp_path / "images"
    write_idx(path, IMAGES, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") is compress
    np.testing.assert_array_equal(read_idx(path, ndim=3), IMAGES)


def test_header_is_big_endian_idx(tmp_path) -> None:
    path = tmp_path / "labels"
    write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    assert path.read_bytes()[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 3])
    assert read_idx(path, ndim=1).tolist() == [7, 2, 1]


def test_truncated_data_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "images"
    write_idx(path, IMAGES)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"is truncated: dimensions \(3, 28, 28\) need 2352 bytes of data, found 2342"):
        read_idx(path, ndim=3)


def test_truncated_header_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "images"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="header needs 16 bytes"):
        read_idx(path, ndim=3)


def test_truncated_gzip_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, IMAGES, compress=True)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(path, ndim=3)


def test_wrong_magic_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "notidx"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataError, match="not an IDX file of unsigned bytes: magic 504b0304"):
        read_idx(path, ndim=3)


def test_labels_file_where_images_expected(tmp_path) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 5, 6])))
    with pytest.raises(DataError, match="expected 3 dimension"):
        read_idx(path, ndim=3)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope", ndim=1)
