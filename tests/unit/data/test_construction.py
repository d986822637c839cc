"""MultiMNIST construction: canvas geometry, partners, splits and byte-identical reruns."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mtlcli.data import multimnist
from mtlcli.data.prepare import prepare
from mtlcli.errors import DataError
from tests.conftest import make_raw_dir


def test_overlay_puts_left_at_origin_and_right_at_6_6_with_max() -> None:
    left = np.zeros((1, 28, 28), np.uint8)
    right = np.zeros((1, 28, 28), np.uint8)
    left[0, 0, 0] = 11
    left[0, 27, 27] = 50  # lands on the right item's (21, 21): max with 200 there
    right[0, 0, 0] = 22  # canvas (6, 6)
    right[0, 27, 27] = 33  # canvas (33, 33)
    right[0, 21, 21] = 200
    canvas = multimnist.overlay(left, right, size=36)[0]
    assert canvas.shape == (36, 36)
    assert canvas[0, 0] == 11 and canvas[6, 6] == 22 and canvas[33, 33] == 33
    assert canvas[27, 27] == 200  # pixel-wise max, not a sum
    assert np.count_nonzero(canvas) == 4
    assert canvas[34:, :].sum() == 0 and canvas[:, 34:].sum() == 0


def test_overlay_overlap_takes_the_maximum_not_the_sum() -> None:
    left = np.full((1, 28, 28), 200, np.uint8)
    right = np.full((1, 28, 28), 100, np.uint8)
    canvas = multimnist.overlay(left, right, size=36)[0]
    assert canvas[10, 10] == 200 and canvas[30, 30] == 100 and canvas[0, 30] == 0


def test_nearest_resize_to_28_samples_pixel_centres() -> None:
    idx = multimnist.resize_indices(28)
    assert idx[0] == 0 and idx[-1] == 35 and len(idx) == 28
    assert np.all(np.diff(idx) >= 1)  # no row sampled twice when shrinking
    expected = np.floor((np.arange(28) + 0.5) * 36 / 28).astype(int)
    np.testing.assert_array_equal(idx, expected)
    canvas_left = np.zeros((1, 28, 28), np.uint8)
    canvas_left[0, 0, 0] = 9
    small = multimnist.overlay(canvas_left, np.zeros((1, 28, 28), np.uint8), size=28)
    assert small.shape == (1, 28, 28) and small[0, 0, 0] == 9


def test_partner_is_never_itself_and_covers_the_others() -> None:
    rng = np.random.default_rng(0)
    partner = multimnist.draw_partners(5, 5, rng, same_pool=True)
    assert partner.shape == (5,)
    many = np.stack([multimnist.draw_partners(5, 5, rng, same_pool=True) for _ in range(2000)])
    assert not np.any(many == np.arange(5))
    for i in range(5):  # uniform over the 4 others
        counts = np.bincount(many[:, i], minlength=5)
        assert counts[i] == 0 and np.all(counts[np.arange(5) != i] > 400)


def _hand_made_source(n_train: int, n_test: int) -> dict[str, np.ndarray]:
    """Each image's pixel (0, 0) holds its index + 1 (so composites reveal their sources)."""

    def images(n: int) -> np.ndarray:
        out = np.zeros((n, 28, 28), np.uint8)
        out[:, 0, 0] = np.arange(1, n + 1)
        out[:, 27, 27] = np.arange(1, n + 1)
        return out

    return {
        "train_images": images(n_train),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": images(n_test),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }


def test_build_splits_labels_and_disjoint_validation() -> None:
    raw = {"mnist": _hand_made_source(200, 50)}
    out = multimnist.build(multimnist.SPECS["multimnist"], raw, seed=3, size=36)
    assert {k: len(v[0]) for k, v in out.items()} == {"train": 180, "val": 20, "test": 50}
    sources = {}
    for split, (images, labels) in out.items():
        left_id = images[:, 0, 0].astype(int) - 1  # left item's pixel (0, 0)
        right_id = images[:, 33, 33].astype(int) - 1  # right item's (27, 27) lands at (33, 33)
        assert np.all(left_id != right_id)
        np.testing.assert_array_equal(labels[:, 0], left_id % 10)
        np.testing.assert_array_equal(labels[:, 1], right_id % 10)
        sources[split] = set(left_id) | set(right_id)
    assert sources["train"].isdisjoint(sources["val"])  # validation shares no source image with training
    assert len(set(out["train"][0][:, 0, 0])) == 180  # each training image is a left item exactly once


def test_build_is_seeded() -> None:
    raw = {"mnist": _hand_made_source(100, 20)}
    spec = multimnist.SPECS["multimnist"]
    a = multimnist.build(spec, raw, seed=0, size=28)
    b = multimnist.build(spec, raw, seed=0, size=28)
    c = multimnist.build(spec, raw, seed=1, size=28)
    assert all(np.array_equal(a[s][0], b[s][0]) and np.array_equal(a[s][1], b[s][1]) for s in a)
    assert not np.array_equal(a["train"][0], c["train"][0])


def _digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_prepare_twice_is_byte_identical(tmp_path, raw_dirs) -> None:
    sources = {"fashion-mnist": raw_dirs["fashion-mnist"]}
    first = prepare("multifashion", data_dir=tmp_path / "a", source_dirs=sources, seed=5)
    second = prepare("multifashion", data_dir=tmp_path / "b", source_dirs=sources, seed=5)
    assert first.built and second.built
    assert _digest(first.path) == _digest(second.path)
    again = prepare("multifashion", data_dir=tmp_path / "a", source_dirs=sources, seed=5)
    assert not again.built  # already prepared: a no-op
    with pytest.raises(DataError, match="pass --force"):
        prepare("multifashion", data_dir=tmp_path / "a", source_dirs=sources, seed=6)
    rebuilt = prepare("multifashion", data_dir=tmp_path / "a", source_dirs=sources, seed=6, force=True)
    assert rebuilt.built and rebuilt.meta["seed"] == 6


def test_prepare_multi_fashion_mnist_uses_both_sources(tmp_path, raw_dirs) -> None:
    result = prepare("multi-fashion-mnist", data_dir=tmp_path, source_dirs=dict(raw_dirs), size=36)
    assert set(result.meta["sources"]) == {"mnist", "fashion-mnist"}
    assert result.meta["size"] == 36
    assert result.meta["tasks"][0]["source"] == "mnist" and result.meta["tasks"][1]["source"] == "fashion-mnist"
    images = np.load(result.path / "train_images.npy")
    assert images.shape[1:] == (36, 36) and images.dtype == np.uint8


def test_prepare_validates_counts(tmp_path) -> None:
    from mtlcli.data.idx import write_idx

    bad = make_raw_dir(tmp_path / "bad", seed=0)
    write_idx(bad / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8), compress=True)
    with pytest.raises(DataError, match="120 images but 7 labels"):
        prepare("multifashion", data_dir=tmp_path / "d", source_dirs={"fashion-mnist": bad})
    assert not (tmp_path / "d" / "multifashion").exists()  # nothing `train` would accept


def test_prepare_missing_files_names_them(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="lacks Fashion-MNIST file") as info:
        prepare("multifashion", data_dir=tmp_path / "d", source_dirs={"fashion-mnist": tmp_path / "empty"})
    assert "train-images-idx3-ubyte.gz" in info.value.message


def test_corrupted_prepared_file_is_refused(tmp_path, raw_dirs) -> None:
    from mtlcli.data.store import load_prepared

    result = prepare("multifashion", data_dir=tmp_path, source_dirs={"fashion-mnist": raw_dirs["fashion-mnist"]})
    target = result.path / "val_labels.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        load_prepared(tmp_path, "multifashion")
