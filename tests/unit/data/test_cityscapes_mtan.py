"""MTAN's Cityscapes prepare: arrays and conventions, the split, layouts, every validation rule, atomicity, CLI."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data import cityscapes_mtan, npy_release
from mtlcli.data.registry import CITYSCAPES_MTAN, Prepared, PrepareRequest, get
from mtlcli.data.store import SPLITS, load_prepared
from mtlcli.errors import DataError
from tests.cityscapes_mtan_fixture import make_cityscapes_mtan_source
from tests.npy_release_fixture import FakeRelease, assert_splits_equal, loaded_splits, npy_bytes, replace_file, set_at

NAME = "cityscapes-mtan"
SIZE, WIDTH = 32, 64


def build(data_dir: Path, source: Path | None, **kwargs: object) -> Prepared:
    options = {"data_dir": data_dir, "size": SIZE, "seed": 0, **kwargs}
    return cityscapes_mtan.prepare_cityscapes_mtan(CITYSCAPES_MTAN, PrepareRequest(**options), source)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeRelease:
    """10 train / 4 val samples of 32x64, read-only for the module."""
    return make_cityscapes_mtan_source(tmp_path_factory.mktemp("cs-src"), seed=1)


@pytest.fixture(scope="module")
def prepared(fake: FakeRelease, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return build(tmp_path_factory.mktemp("cs-data"), fake.path)


@pytest.fixture
def own(tmp_path: Path) -> FakeRelease:
    """A source a test may damage."""
    return make_cityscapes_mtan_source(tmp_path / "src", n_train=6, n_val=3, seed=2)


# ----------------------------------------------------------------------------- the registry entry
def test_the_entry_says_which_cityscapes_it_is() -> None:
    spec = get(NAME)
    assert spec.task_names == ["segmentation", "depth", "segmentation_19"]
    assert spec.all_task_names == ["segmentation", "depth"]  # what the references train; 19 classes on request
    assert [t.num_classes for t in spec.tasks] == [7, 1, 19]
    assert spec.target_kinds == {"segmentation": "segmentation", "depth": "depth", "segmentation_19": "segmentation"}
    assert (spec.default_size, spec.width_of(128), spec.default_encoder) == (128, 256, "segnet-split")
    assert spec.augment == "scale-crop-flip"
    assert "MTAN" in spec.description and "lorenmt/mtan" in spec.how_to_get


# ----------------------------------------------------------------------------- what is built
def test_arrays_follow_the_release_conventions(fake: FakeRelease, prepared: Prepared) -> None:
    data = load_prepared(prepared.path.parent, NAME)
    assert data.task_names == ["segmentation", "depth", "segmentation_19"]
    assert data.num_classes == {"segmentation": 7, "depth": 1, "segmentation_19": 19}
    assert_splits_equal(loaded_splits(prepared.path.parent, NAME), fake.expected(seed=0))
    train = data.targets["train"]
    assert data.images["train"].dtype == np.uint8 and data.images["train"].shape == (9, SIZE, WIDTH, 3)
    assert train["segmentation"].dtype == np.uint8 and train["segmentation_19"].shape == (9, SIZE, WIDTH)
    assert train["depth"].dtype == np.float32 and train["depth"].shape == (9, SIZE, WIDTH)
    assert 255 in train["segmentation"] and train["segmentation"][train["segmentation"] != 255].max() == 6
    assert train["segmentation_19"][train["segmentation_19"] != 255].max() == 18 and np.isnan(train["depth"]).any()
    meta = prepared.meta
    assert meta["dataset"] == NAME and meta["counts"] == {"train": 9, "val": 1, "test": 4}
    assert meta["validation"]["samples"] == [int(s) for s in fake.held_out(0)]
    assert meta["source"] == {"dir": str(fake.root), "layout": "folder"} and meta["source_size"] == [SIZE, WIDTH]
    assert set(meta["conventions"]) == {"segmentation", "segmentation_19", "depth"}
    assert "inverse depth" in meta["conventions"]["depth"]
    assert not list(prepared.path.glob("*label_2*"))  # the release's 2-class labels are not read


def test_resize_from_the_256x512_release(tmp_path: Path) -> None:
    src = make_cityscapes_mtan_source(tmp_path / "src", n_train=3, n_val=1, hw=(64, 128), seed=5)
    result = build(tmp_path / "data", src.path, size=32)
    assert (result.meta["size"], result.meta["width"], result.meta["source_size"]) == (32, 64, [64, 128])
    data, expected = loaded_splits(tmp_path / "data", NAME), src.expected(seed=0, hw=(32, 64))
    for split in SPLITS:
        for key in ("segmentation", "segmentation_19", "depth"):
            np.testing.assert_array_equal(data[split][key], expected[split][key])
        assert np.abs(data[split]["images"].astype(int) - expected[split]["images"]).max() <= 1


@pytest.mark.parametrize("layout", ["zip", "subfolder", "float64"])
def test_other_layouts_give_identical_arrays(layout: str, prepared: Prepared, tmp_path: Path) -> None:
    options = {"zip": {"zipped": True}, "subfolder": {"subfolder": True}, "float64": {"dtype": np.float64}}[layout]
    src = make_cityscapes_mtan_source(tmp_path / "src", seed=1, **options)  # type: ignore[arg-type]
    result = build(tmp_path / "data", src.path)
    if layout != "float64":
        assert result.meta["files"] == prepared.meta["files"]
    source = {"dir": str(src.root), "layout": "subfolder" if layout == "subfolder" else "folder"}
    if layout == "zip":
        source = {"dir": str(src.path), "layout": "zip", "zip": "cityscapes.zip", "prefix": "cityscapes/"}
    assert result.meta["source"] == source
    assert_splits_equal(loaded_splits(tmp_path / "data", NAME), src.expected(seed=0))


def test_source_may_name_a_zip_of_any_name(tmp_path: Path) -> None:
    src = make_cityscapes_mtan_source(tmp_path / "src", n_train=3, n_val=1, zipped=True)
    renamed = src.root.rename(src.root.with_name("cityscapes_128x256.zip"))
    result = build(tmp_path / "data", renamed)
    assert result.meta["source"]["zip"] == "cityscapes_128x256.zip"
    assert_splits_equal(loaded_splits(tmp_path / "data", NAME), src.expected(seed=0))


def test_the_default_source_is_data_dir_raw_cityscapes_mtan(tmp_path: Path) -> None:
    src = make_cityscapes_mtan_source(tmp_path / "data" / "raw" / NAME, n_train=3, n_val=1)
    result = build(tmp_path / "data", None)
    assert result.built and result.meta["source"]["dir"] == str(src.root)


def test_already_prepared_is_not_rebuilt_and_other_settings_need_force(own: FakeRelease, tmp_path: Path) -> None:
    first = build(tmp_path / "data", own.path)
    again = build(tmp_path / "data", own.path)
    assert not again.built and again.meta == first.meta
    with pytest.raises(DataError, match="pass --force"):
        build(tmp_path / "data", own.path, seed=1)


@pytest.mark.parametrize(("size", "needle"), [(31, "--size 31"), (257, "--size 257"), (64, "up to 32")])
def test_bad_sizes_are_refused(size: int, needle: str, own: FakeRelease, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=needle):
        build(tmp_path / "data", own.path, size=size)
    assert not (tmp_path / "data" / NAME).exists()


# ----------------------------------------------------------------------------- bad sources
def test_no_source_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", None)
    assert "image/, label_7/, label_19/ and depth/" in info.value.message and "cityscapes.zip" in info.value.message
    assert cityscapes_mtan.RELEASE_URL in info.value.hint and "mtl prepare cityscapes-mtan --source DIR" in info.value.hint


def test_a_missing_folder_is_named(own: FakeRelease, tmp_path: Path) -> None:
    shutil.rmtree(own.root / "train" / "label_19")
    with pytest.raises(DataError, match=r"missing train/label_19/"):
        build(tmp_path / "data", own.path)


def test_a_count_that_disagrees_names_the_sample(own: FakeRelease, tmp_path: Path) -> None:
    own.file("val", "depth", 2).unlink()
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", own.path)
    message = info.value.message
    assert message.startswith(f"{own.file('val', 'depth', 2)} is missing ({own.file('val', 'image', 2)} exists")
    assert "val/ holds image/ 3, label_7/ 3, label_19/ 3, depth/ 2 files" in message


BAD_FILES = {
    "garbage": ("train", "label_7", 2, b"not a numpy file", "not a readable .npy file"),
    "truncated": ("val", "depth", 1, npy_bytes(np.zeros((32, 64, 1), np.float32))[:200], "not a readable .npy file"),
    "truncated image": ("train", "image", 0, npy_bytes(np.zeros((32, 64, 3), np.float32))[:-7], "not a readable .npy file"),
    "pickled": ("train", "image", 4, npy_bytes(np.array([None, 1], dtype=object), allow_pickle=True), "pickled object array"),
    "label_7 shape": ("train", "label_7", 1, lambda a: a[..., None], r"label_7 has shape \[32, 64, 1\], expected \[H, W\]"),
    "depth shape": ("val", "depth", 0, lambda a: a[..., 0], r"depth has shape \[32, 64\], expected \[H, W, 1\]"),
    "image size": ("train", "image", 5, lambda a: a[:16], r"image has shape \[16, 64, 3\].*like the first image"),
    "label_19 size": ("val", "label_19", 1, lambda a: a[:, :60], r"label_19 has shape \[32, 60\]"),
    "uint8 image": ("train", "image", 3, lambda a: (a * 255).astype(np.uint8), "dtype uint8, expected a float"),
    "label_7 7": ("train", "label_7", 2, set_at((5, 6), 7), r"label_7 7.0 at pixel \(row 5, column 6\) is not a class \(0..6\)"),
    "label_19 19": ("val", "label_19", 2, set_at((3, 1), 19), r"label_19 19.0 at pixel \(row 3, column 1\) is not a class"),
    "label 2.5": ("val", "label_7", 1, set_at((7, 1), 2.5), "label_7 2.5 at pixel"),
    "label -2": ("train", "label_19", 0, set_at((0, 0), -2), "label_19 -2.0 at pixel"),
    "image above 1": ("val", "image", 0, set_at((3, 4, 1), 1.5), r"image value 1.5 at pixel \(row 3, column 4\) is outside"),
    "depth NaN": ("train", "depth", 4, set_at((9, 9, 0), np.nan), r"depth holds nan at pixel \(row 9, column 9\)"),
    "label NaN": ("val", "label_7", 0, set_at((2, 2), np.nan), "label_7 holds nan at pixel"),
    "image inf": ("train", "image", 2, set_at((1, 1, 0), np.inf), "NaN or infinite"),
    "negative depth": ("val", "depth", 2, set_at((4, 4, 0), -0.5), r"depth -0.5 at pixel \(row 4, column 4\) is negative"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_each_bad_file_is_one_error_naming_it(case: str, own: FakeRelease, tmp_path: Path) -> None:
    split, kind, stem, change, pattern = BAD_FILES[case]
    path = replace_file(own, split, kind, stem, change)
    with pytest.raises(DataError, match=pattern) as info:
        build(tmp_path / "data", own.path)
    assert info.value.message.startswith(f"{path}: "), info.value.message
    assert not (tmp_path / "data" / NAME).exists() and not list((tmp_path / "data").glob(f".{NAME}.tmp-*"))


def test_a_bad_member_of_the_zip_is_named(tmp_path: Path) -> None:
    src = make_cityscapes_mtan_source(tmp_path / "src", n_train=3, n_val=1, zipped=True)
    broken = "cityscapes/val/label_7/0.npy"
    with zipfile.ZipFile(src.root) as original, zipfile.ZipFile(tmp_path / "cityscapes.zip", "w") as archive:
        for name in original.namelist():
            archive.writestr(name, b"\x93NUMPY broken" if name == broken else original.read(name))
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", tmp_path / "cityscapes.zip")
    assert info.value.message.startswith(f"{broken} in {tmp_path / 'cityscapes.zip'}: not a readable .npy file")


def test_a_zip_without_the_release_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "cityscapes.zip", "w") as archive:
        archive.writestr("train/image/0.npy", npy_bytes(np.zeros((32, 64, 3))))  # label_7/, label_19/, depth/ missing
    with pytest.raises(DataError, match=r"missing train/label_7/, train/label_19/, train/depth/, val/image/"):
        build(tmp_path / "data", tmp_path)
    (tmp_path / "cityscapes.zip").write_bytes(b"PK nope")
    with pytest.raises(DataError, match="not a readable zip file"):
        build(tmp_path / "data", tmp_path)


# ----------------------------------------------------------------------------- an interrupted prepare
def test_an_interrupted_prepare_leaves_nothing_and_the_next_starts_clean(
    own: FakeRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    calls = []
    original = npy_release.convert_sample

    def interrupt(*args: object) -> dict[str, np.ndarray]:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(npy_release, "convert_sample", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build(data, own.path)
    assert not (data / NAME).exists() and not list(data.glob(f".{NAME}.tmp-*"))
    monkeypatch.setattr(npy_release, "convert_sample", original)
    killed = data / f".{NAME}.tmp-{2**22 + 12345}-deadbeef"  # what a killed prepare (no cleanup) leaves
    killed.mkdir()
    (killed / "train_images.npy").write_bytes(b"half")
    if os.path.exists(f"/proc/{2**22 + 12345}"):
        pytest.skip("that process id is alive here")
    result = build(data, own.path)
    assert result.built and not killed.exists()
    assert_splits_equal(loaded_splits(data, NAME), own.expected(seed=0))


# ----------------------------------------------------------------------------- the command line
runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["prepare", NAME, *args])
    return result.exit_code, " ".join(result.output.split())


def test_cli_prepares_and_reports_one_clear_line_on_errors(own: FakeRelease, tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, text = cli("--source", str(own.path), "--size", "32", "--data-dir", str(data))
    assert code == 0, text
    assert f"prepared {NAME} in {data / NAME} (train 5, val 1, test 3" in text and "32x64" in text
    replace_file(own, "train", "label_19", 1, set_at((2, 2), 25))
    code, text = cli("--source", str(own.path), "--size", "32", "--data-dir", str(tmp_path / "other"))
    assert code == 1 and text.count("Error:") == 1 and "Traceback" not in text
    assert f"Error: {own.file('train', 'label_19', 1)}: label_19 25.0 at pixel (row 2, column 2) is not a class" in text
    assert not (tmp_path / "other" / NAME).exists()
    code, text = cli("--source", str(own.path), "--workers", "2", "--data-dir", str(tmp_path / "other"))
    assert code == 1 and "--workers" in text and "Traceback" not in text


def test_cli_without_a_source_says_where_to_get_it(tmp_path: Path) -> None:
    code, text = cli("--data-dir", str(tmp_path / "data"))
    assert code == 1 and text.count("Error:") == 1 and "Traceback" not in text
    assert "github.com/lorenmt/mtan" in text and f"mtl prepare {NAME} --source DIR" in text
    assert "gaw6vh6qusoyms6" in text.replace(" ", "")  # the 128x256 release MTAN links
