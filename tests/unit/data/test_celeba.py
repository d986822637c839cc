"""CelebA prepare: labels and splits, layouts, determinism, meta.json, resume, atomicity and validation."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mtlcli.data import celeba
from mtlcli.data.registry import CELEBA_ATTRIBUTES
from mtlcli.data.store import SPLITS, load_prepared
from mtlcli.errors import DataError
from mtlcli.io import sha256_file
from tests.celeba_fixture import FakeCelebA, attr_text, make_celeba_source, replace_line

SIZE = 32


def build(data_dir: Path, source: Path | None, **kwargs: object) -> celeba.Prepared:
    options = {"size": SIZE, "force": False, "workers": 1, "console": None, **kwargs}
    return celeba.prepare_celeba(data_dir=data_dir, source=source, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeCelebA:
    """12 images (8 train, 2 val, 2 test, partitions shuffled), read-only for the module."""
    return make_celeba_source(tmp_path_factory.mktemp("celeba-src"), layout="folder", seed=3)


@pytest.fixture(scope="module")
def prepared(fake: FakeCelebA, tmp_path_factory: pytest.TempPathFactory) -> celeba.Prepared:
    return build(tmp_path_factory.mktemp("celeba-data"), fake.path)


@pytest.fixture
def own(tmp_path: Path) -> FakeCelebA:
    """A source a test may damage."""
    return make_celeba_source(tmp_path / "src", layout="folder", seed=3)


# ----------------------------------------------------------------------------- what is built
def test_labels_splits_shapes_and_dtypes_follow_the_files(fake: FakeCelebA, prepared: celeba.Prepared) -> None:
    data = load_prepared(prepared.path.parent, "celeba")
    assert data.task_names == list(CELEBA_ATTRIBUTES)
    assert data.num_classes == dict.fromkeys(CELEBA_ATTRIBUTES, 2)
    for split in SPLITS:
        _, labels = fake.split(split)
        assert data.images[split].shape == (len(labels), SIZE, SIZE, 3) and data.images[split].dtype == np.uint8
        assert data.labels[split].dtype == np.uint8 and set(np.unique(data.labels[split])) <= {0, 1}
        np.testing.assert_array_equal(data.labels[split], labels)  # -1 -> 0, registry order, file order
    assert prepared.meta["counts"] == {"train": 8, "val": 2, "test": 2}
    assert isinstance(data.images["train"], np.memmap) and isinstance(data.labels["train"], np.memmap)


def test_images_are_the_resized_jpegs_in_partition_order(fake: FakeCelebA, prepared: celeba.Prepared) -> None:
    data = load_prepared(prepared.path.parent, "celeba")
    names, _ = fake.split("val")
    images = celeba.ImageSource(fake.root / celeba.IMAGE_DIR, "folder")
    np.testing.assert_array_equal(data.images["val"], celeba.decode_chunk(images, names, SIZE))
    assert data.images["train"].std() > 10  # real pictures, not zeros


def test_a_permuted_header_still_gives_registry_order(fake: FakeCelebA, tmp_path: Path) -> None:
    src = make_celeba_source(tmp_path / "src", seed=3)
    order = np.random.default_rng(0).permutation(len(CELEBA_ATTRIBUTES))
    signs = np.where(src.labels == 1, 1, -1)[:, order]
    src.attr_path.write_text(attr_text(src.names, signs, tuple(CELEBA_ATTRIBUTES[i] for i in order)))
    result = build(tmp_path / "data", src.path)
    data = load_prepared(result.path.parent, "celeba")
    np.testing.assert_array_equal(data.labels["train"], src.split("train")[1])


@pytest.mark.parametrize("layout", ["zip", "torchvision"])
def test_zip_and_torchvision_layouts_give_identical_arrays(layout: str, prepared: celeba.Prepared, tmp_path: Path) -> None:
    src = make_celeba_source(tmp_path / "src", layout=layout, seed=3)
    result = build(tmp_path / "data", src.path)
    assert result.meta["files"] == prepared.meta["files"]
    assert result.meta["source_layout"] == {
        "layout": "torchvision" if layout == "torchvision" else "official",
        "images": "zip" if layout == "zip" else "folder",
    }


def test_two_workers_give_the_same_bytes_as_one(
    fake: FakeCelebA, prepared: celeba.Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(celeba, "CHUNK_IMAGES", 3)  # several chunks per split, finishing in any order
    result = build(tmp_path / "data", fake.path, workers=2)
    assert result.meta["files"] == prepared.meta["files"]


def test_meta_records_statistics_resize_and_checksums(prepared: celeba.Prepared) -> None:
    meta = prepared.meta
    train = np.load(prepared.path / "train_images.npy").reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(meta["mean"], train.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(meta["std"], train.std(axis=0), rtol=0, atol=1e-12)
    assert len(meta["mean"]) == len(meta["std"]) == 3
    assert meta["seed"] is None and meta["size"] == SIZE and meta["dataset"] == "celeba"
    assert "bilinear" in meta["resize"] and "antialias" in meta["resize"] and "none" in meta["crop"]
    assert isinstance(meta["prepare_seconds"], float) and meta["prepare_seconds"] >= 0
    assert [t["name"] for t in meta["tasks"]] == list(CELEBA_ATTRIBUTES)
    assert meta["source"]["files"][celeba.ATTR_FILE]["official_md5"] is False
    assert sorted(meta["files"]) == sorted(f"{s}_{k}.npy" for s in SPLITS for k in ("images", "labels"))
    for name, digest in meta["files"].items():
        assert sha256_file(prepared.path / name) == digest
    assert sorted(p.name for p in prepared.path.iterdir()) == sorted([*meta["files"], "meta.json"])


def test_channel_stats_match_numpy_whatever_the_block() -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(7, 5, 4, 3), dtype=np.uint8)
    pixels = images.reshape(-1, 3) / 255
    for block in (1, 3, 100):
        mean, std = celeba.channel_stats(images, block=block)
        np.testing.assert_allclose(mean, pixels.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(std, pixels.std(axis=0), atol=1e-12)


# ----------------------------------------------------------------------------- reruns, resume, atomicity
def test_second_call_is_a_no_op_and_force_rebuilds(fake: FakeCelebA, tmp_path: Path) -> None:
    first = build(tmp_path, fake.path)
    stamp = (first.path / "meta.json").stat().st_mtime_ns
    again = build(tmp_path, None)  # no source needed when nothing is to be done
    assert not again.built and again.meta == first.meta
    assert (first.path / "meta.json").stat().st_mtime_ns == stamp
    forced = build(tmp_path, fake.path, force=True)
    assert forced.built and forced.meta["files"] == first.meta["files"]
    assert (first.path / "meta.json").stat().st_mtime_ns != stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".celeba.") and p.name != ".celeba.lock"] == []


def test_another_size_needs_force(fake: FakeCelebA, tmp_path: Path) -> None:
    build(tmp_path, fake.path)
    with pytest.raises(DataError) as info:
        build(tmp_path, fake.path, size=48)
    assert "size 32" in info.value.message and "--force" in info.value.message
    assert build(tmp_path, fake.path, size=48, force=True).meta["size"] == 48


def test_an_interrupted_prepare_resumes_where_it_stopped(
    fake: FakeCelebA, prepared: celeba.Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(celeba, "CHUNK_IMAGES", 2)  # 4 + 1 + 1 chunks
    real = celeba.decode_chunk
    calls: list[list[str]] = []

    def interrupted_after_two(images: celeba.ImageSource, names: list[str], size: int) -> np.ndarray:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(names)
        return real(images, names, size)

    monkeypatch.setattr(celeba, "decode_chunk", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, fake.path)
    assert not (tmp_path / "celeba").exists() and (tmp_path / f".celeba.partial-{SIZE}" / "done.json").is_file()
    first = list(calls)
    calls.clear()
    monkeypatch.setattr(celeba, "decode_chunk", lambda *a: calls.append(a[1]) or real(*a))
    result = build(tmp_path, fake.path)
    assert len(calls) == 4 and not {n for c in calls for n in c} & {n for c in first for n in c}
    assert result.meta["files"] == prepared.meta["files"] and result.meta["resumed_images"] == 4
    assert not (tmp_path / f".celeba.partial-{SIZE}").exists()


def test_a_partial_build_of_other_texts_is_started_again(
    own: FakeCelebA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(celeba, "CHUNK_IMAGES", 2)
    monkeypatch.setattr(celeba, "decode_chunk", _fail_after(celeba.decode_chunk, 1))
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "data", own.path)
    replace_line(own.attr_path, 3, own.attr_path.read_text().split("\n")[2].replace(" -1", "  1", 1))
    monkeypatch.undo()
    monkeypatch.setattr(celeba, "CHUNK_IMAGES", 2)
    assert build(tmp_path / "data", own.path).meta["resumed_images"] == 0


def _fail_after(real, n: int):
    calls = []

    def wrapper(*args):
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)

    return wrapper


def test_a_corrupt_jpeg_fails_without_touching_the_prepared_dataset(
    own: FakeCelebA, tmp_path: Path, prepared: celeba.Prepared
) -> None:
    data_dir = tmp_path / "data"
    build(data_dir, own.path)
    before = {p.name: sha256_file(p) for p in (data_dir / "celeba").iterdir()}
    (own.root / celeba.IMAGE_DIR / "000005.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError) as info:
        build(data_dir, own.path, force=True)
    assert "000005.jpg" in info.value.message and "JPEG" in info.value.message
    assert "a rerun resumes" in (info.value.hint or "")
    assert {p.name: sha256_file(p) for p in (data_dir / "celeba").iterdir()} == before
    load_prepared(data_dir, "celeba")


def test_a_failed_first_prepare_leaves_no_dataset(own: FakeCelebA, tmp_path: Path) -> None:
    (own.root / celeba.IMAGE_DIR / "000002.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"000002\.jpg"):
        build(tmp_path / "data", own.path)
    assert not (tmp_path / "data" / "celeba").exists()


# ----------------------------------------------------------------------------- validation
ATTR, PART = celeba.ATTR_FILE, celeba.PARTITION_FILE


TEXT_PROBLEMS = {  # name: (file, line, new text or None to delete, expected line in the error, words in it)
    "count not a number": (ATTR, 1, "twelve", 1, "number of images"),
    "count disagrees": (ATTR, 1, "13", 1, "13 images"),
    "unexpected header name": (ATTR, 2, " ".join(CELEBA_ATTRIBUTES).replace("Smiling", "Smile"), 2, "'Smile'"),
    "header one short": (ATTR, 2, " ".join(CELEBA_ATTRIBUTES[:-1]), 2, "'Young'"),
    "header name twice": (ATTR, 2, " ".join(CELEBA_ATTRIBUTES).replace("Bald", "Bangs"), 2, "twice"),
    "row with 39 values": (ATTR, 5, "000003.jpg" + "  1" * 39, 5, "39 values"),
    "value 0": (ATTR, 4, "000002.jpg" + "  1" * 20 + "  0" + " -1" * 19, 4, "Male of 000002.jpg is '0'"),
    "duplicated name": (ATTR, 6, "000003.jpg" + "  1" * 40, 6, "first on line 5"),
    "partition 3": (PART, 3, "000003.jpg 3", 3, "'3'"),
    "partition without value": (PART, 2, "000002.jpg", 2, "IMAGE PARTITION"),
    "partition duplicate": (PART, 4, "000001.jpg 0", 4, "listed twice"),
    "no partition row": (PART, 7, None, 9, "000007.jpg is not in list_eval_partition.txt"),
    "partition of an unknown image": (PART, 13, "000099.jpg 0", 13, "no row in list_attr_celeba.txt"),
}


@pytest.mark.parametrize("case", list(TEXT_PROBLEMS), ids=list(TEXT_PROBLEMS))
def test_each_text_problem_names_the_file_and_line(
    case: str, own: FakeCelebA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fname, line, text, reported, words = TEXT_PROBLEMS[case]
    replace_line(own.root / fname, line, text)
    where = ATTR if case == "no partition row" else fname
    (own.root / celeba.IMAGE_DIR / "000001.jpg").write_bytes(b"corrupt")  # text is checked before any image
    monkeypatch.setattr(celeba, "decode_chunk", _never)
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", own.path)
    assert f"{where}:{reported}:" in info.value.message and words in info.value.message
    assert not (tmp_path / "data").exists()


def _never(*args: object) -> np.ndarray:
    raise AssertionError("decoded an image before the text was validated")


def test_an_empty_split_is_refused(tmp_path: Path) -> None:
    src = make_celeba_source(tmp_path / "src", n=6, counts=(5, 1, 0))
    with pytest.raises(DataError, match=r"list_eval_partition.txt: no image is in the test split"):
        build(tmp_path / "data", src.path)


def test_a_missing_image_names_it_and_its_line(own: FakeCelebA, tmp_path: Path) -> None:
    (own.root / celeba.IMAGE_DIR / "000004.jpg").unlink()
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", own.path)
    assert "000004.jpg is missing" in info.value.message and f"{ATTR}:6 " in info.value.message


def test_a_zip_member_missing_names_it(tmp_path: Path) -> None:
    src = make_celeba_source(tmp_path / "src", layout="zip")
    archive = src.root / celeba.IMAGE_ZIP
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(tmp_path / "new.zip", "w") as new:
        for item in old.infolist():
            if not item.filename.endswith("000012.jpg"):
                new.writestr(item, old.read(item))
    shutil.move(tmp_path / "new.zip", archive)
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", src.path)
    assert "img_align_celeba/000012.jpg in" in info.value.message and f"{ATTR}:14 " in info.value.message


@pytest.mark.parametrize("missing", [ATTR, PART, celeba.IMAGE_DIR])
def test_a_missing_file_is_named(missing: str, own: FakeCelebA, tmp_path: Path) -> None:
    target = own.root / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", own.path)
    assert f"missing {missing}" in info.value.message
    assert celeba.OFFICIAL_URL in (info.value.hint or "")


def test_without_a_source_it_says_how_to_get_celeba(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build(tmp_path, None)
    message = info.value.message
    assert ATTR in message and PART in message and celeba.IMAGE_ZIP in message and celeba.OFFICIAL_URL in message
    assert "cannot be fetched by a script" in message and str(tmp_path / "raw" / "celeba") in message
    assert "mtl prepare celeba --source DIR" in (info.value.hint or "")


def test_raw_celeba_in_the_data_dir_is_the_default_source(tmp_path: Path) -> None:
    make_celeba_source(tmp_path / "raw", layout="torchvision", n=6)  # data/raw/celeba/...
    result = build(tmp_path, None)
    assert result.built and result.meta["counts"] == {"train": 4, "val": 1, "test": 1}


@pytest.mark.parametrize("size", [16, 257])
def test_sizes_out_of_bounds_are_refused(size: int, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"--size {size}"):
        build(tmp_path, None, size=size)
