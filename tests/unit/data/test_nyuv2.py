"""NYUv2 prepare: arrays and conventions, resize, the seeded validation split, layouts, validation, atomicity, CLI."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data import npy_release, nyuv2
from mtlcli.data.chunked import channel_stats
from mtlcli.data.registry import NYUV2, Prepared, PrepareRequest
from mtlcli.data.store import SPLITS, load_prepared
from mtlcli.errors import DataError
from tests.npy_release_fixture import assert_splits_equal, loaded_splits, replace_file, set_at
from tests.nyuv2_fixture import FakeNYUv2, make_nyuv2_source, npy_bytes

SIZE = 48
WIDTH = 64


def build(data_dir: Path, source: Path | None, **kwargs: object) -> Prepared:
    options = {"data_dir": data_dir, "size": SIZE, "seed": 0, **kwargs}
    return nyuv2.prepare_nyuv2(NYUV2, PrepareRequest(**options), source)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeNYUv2:
    """10 train / 4 val samples of 48x64, read-only for the module."""
    return make_nyuv2_source(tmp_path_factory.mktemp("nyuv2-src"), seed=1)


@pytest.fixture(scope="module")
def prepared(fake: FakeNYUv2, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return build(tmp_path_factory.mktemp("nyuv2-data"), fake.path)


@pytest.fixture
def own(tmp_path: Path) -> FakeNYUv2:
    """A source a test may damage."""
    return make_nyuv2_source(tmp_path / "src", n_train=6, n_val=3, seed=2)


# ----------------------------------------------------------------------------- what is built
def test_arrays_follow_the_release_conventions(fake: FakeNYUv2, prepared: Prepared) -> None:
    data = load_prepared(prepared.path.parent, "nyuv2")
    assert data.task_names == ["segmentation", "depth", "normal"]
    assert data.num_classes == {"segmentation": 13, "depth": 1, "normal": 3}
    assert data.target_kinds == {"segmentation": "segmentation", "depth": "depth", "normal": "normal"}
    assert_splits_equal(loaded_splits(prepared.path.parent, "nyuv2"), fake.expected(seed=0))
    train = data.targets["train"]
    assert data.images["train"].dtype == np.uint8 and data.images["train"].shape == (9, SIZE, WIDTH, 3)
    assert train["segmentation"].dtype == np.uint8 and train["segmentation"].shape == (9, SIZE, WIDTH)
    assert train["depth"].dtype == np.float32 and train["normal"].shape == (9, 3, SIZE, WIDTH)
    assert isinstance(data.images["train"], np.memmap) and isinstance(train["normal"], np.memmap)
    assert 255 in train["segmentation"] and np.isnan(train["depth"]).any()
    invalid = np.isnan(train["normal"])
    assert invalid.any() and (invalid == invalid[:, :1]).all()  # NaN in all three channels or none
    meta = prepared.meta
    assert meta["counts"] == {"train": 9, "val": 1, "test": 4} and (meta["size"], meta["width"]) == (SIZE, WIDTH)
    assert meta["tasks"][0] == {"name": "segmentation", "num_classes": 13, "target": "segmentation"}
    assert meta["source"] == {"dir": str(fake.root), "layout": "folder"} and meta["source_size"] == [SIZE, WIDTH]
    mean, std = channel_stats(fake.expected(seed=0)["train"]["images"])
    assert meta["mean"] == pytest.approx(mean) and meta["std"] == pytest.approx(std)
    assert "1/510" in meta["quantisation"] and meta["prepare_seconds"] >= 0 and meta["files"]


def test_test_is_the_release_val_and_the_validation_split_is_seeded(fake: FakeNYUv2, prepared: Prepared) -> None:
    validation = prepared.meta["validation"]
    assert validation == {"from": "train", "seed": 0, "fraction": 0.1, "samples": [int(s) for s in fake.held_out(0)]}
    data = loaded_splits(prepared.path.parent, "nyuv2")
    test = [fake.samples["val"][s]["label"] for s in fake.stems("val")]
    np.testing.assert_array_equal(data["test"]["segmentation"], np.where(np.stack(test) == -1, 255, np.stack(test)))
    stems = fake.split_stems(0)
    assert set(stems["train"][1]).isdisjoint(stems["val"][1])
    assert sorted(stems["train"][1] + stems["val"][1], key=int) == fake.stems("train")


def test_another_seed_holds_out_other_samples(tmp_path: Path) -> None:
    src = make_nyuv2_source(tmp_path / "src", n_train=20, n_val=2, seed=4)
    splits = {seed: build(tmp_path / f"data{seed}", src.path, seed=seed).meta["validation"]["samples"] for seed in (0, 1)}
    assert splits[0] == [int(s) for s in src.held_out(0)] and splits[1] == [int(s) for s in src.held_out(1)]
    assert len(splits[0]) == 2 and splits[0] != splits[1]
    assert_splits_equal(loaded_splits(tmp_path / "data1", "nyuv2"), src.expected(seed=1))


@pytest.mark.parametrize("size", [48, 51])
def test_resize_is_nearest_for_targets_and_antialiased_for_images(size: int, tmp_path: Path) -> None:
    src = make_nyuv2_source(tmp_path / "src", n_train=4, n_val=2, hw=(96, 128), seed=5)
    result = build(tmp_path / "data", src.path, size=size)
    width = size * 4 // 3
    assert (result.meta["size"], result.meta["width"], result.meta["source_size"]) == (size, width, [96, 128])
    data, expected = loaded_splits(tmp_path / "data", "nyuv2"), src.expected(seed=0, hw=(size, width))
    for split in SPLITS:
        for key in ("segmentation", "depth", "normal"):  # torch's nearest-exact, an independent computation
            np.testing.assert_array_equal(data[split][key], expected[split][key])
        difference = np.abs(data[split]["images"].astype(int) - expected[split]["images"])
        assert difference.max() <= 1  # float32 vs float64 bilinear before rounding
    normal = data["train"]["normal"]
    lengths = np.sqrt((normal**2).sum(axis=1))
    np.testing.assert_allclose(lengths[~np.isnan(lengths)], 1, atol=1e-5)  # never a blend of a normal and a zero


def test_nearest_indices_match_torch_nearest_exact() -> None:
    for source, target in (((288, 384), (48, 64)), ((288, 384), (201, 268)), ((96, 128), (51, 68))):
        rows, cols = npy_release.Resize(source, target).nearest()
        grid = torch.arange(source[0] * source[1], dtype=torch.float64).reshape(1, 1, *source)
        reference = F.interpolate(grid, size=target, mode="nearest-exact")[0, 0].long().numpy()
        np.testing.assert_array_equal(rows[:, None] * source[1] + cols[None, :], reference)


# ----------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("layout", ["zip", "subfolder", "float32"])
def test_other_layouts_give_identical_arrays(layout: str, prepared: Prepared, tmp_path: Path) -> None:
    options = {"zip": {"zipped": True}, "subfolder": {"subfolder": True}, "float32": {"dtype": np.float32}}[layout]
    src = make_nyuv2_source(tmp_path / "src", seed=1, **options)  # type: ignore[arg-type]
    result = build(tmp_path / "data", src.path)
    if layout != "float32":  # float32 depths and normals are other numbers
        assert result.meta["files"] == prepared.meta["files"]
    source = {"dir": str(src.root), "layout": "subfolder" if layout == "subfolder" else "folder"}
    if layout == "zip":
        source = {"dir": str(src.path), "layout": "zip", "zip": "nyuv2.zip", "prefix": "nyuv2/"}
    assert result.meta["source"] == source
    assert_splits_equal(loaded_splits(tmp_path / "data", "nyuv2"), src.expected(seed=0))


def test_the_default_source_is_data_dir_raw_nyuv2(tmp_path: Path) -> None:
    src = make_nyuv2_source(tmp_path / "data" / "raw" / "nyuv2", n_train=3, n_val=1)
    result = build(tmp_path / "data", None)
    assert result.built and result.meta["source"]["dir"] == str(src.root)


def test_non_contiguous_and_non_numeric_names_pair_up_in_numeric_order(own: FakeNYUv2, tmp_path: Path) -> None:
    renames = {"0": "7", "1": "10", "2": "x", "3": "03"}
    for kind in nyuv2.KINDS:
        for old, new in renames.items():
            own.file("train", kind, old).rename(own.file("train", kind, new))
    release = nyuv2.locate_source(own.path, tmp_path)
    assert release.stems["train"] == ["03", "4", "5", "7", "10", "x"]
    result = build(tmp_path / "data", own.path, seed=3)
    held = [release.stems["train"][i] for i in npy_release.validation_rows(6, 3)]
    assert result.meta["validation"]["samples"] == [npy_release.sample_id(s) for s in held]
    first_kept = next(s for s in release.stems["train"] if s not in held)
    old = {new: old for old, new in renames.items()}.get(first_kept, first_kept)
    expected = own.samples["train"][old]["label"]
    first = loaded_splits(tmp_path / "data", "nyuv2")["train"]["segmentation"][0]
    np.testing.assert_array_equal(first, np.where(expected == -1, 255, expected))


# ----------------------------------------------------------------------------- already prepared, bounds
def test_already_prepared_is_not_rebuilt_and_other_settings_need_force(own: FakeNYUv2, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = build(data, own.path)
    shutil.rmtree(own.path)  # the source is not read again
    again = build(data, own.path)
    assert not again.built and again.meta == first.meta
    for change in ({"seed": 1}, {"size": 51}):
        with pytest.raises(DataError, match="pass --force") as info:
            build(data, own.path, **change)
        assert str(data / "nyuv2") in info.value.message
    rebuilt = make_nyuv2_source(tmp_path / "src2", n_train=6, n_val=3, seed=2)
    result = build(data, rebuilt.path, seed=1, force=True)
    assert result.built and result.meta["seed"] == 1 and load_prepared(data, "nyuv2").meta["seed"] == 1


@pytest.mark.parametrize(("size", "needle"), [(50, "--size 50"), (45, "--size 45"), (291, "--size 291"), (96, "up to 48")])
def test_bad_sizes_are_refused(size: int, needle: str, own: FakeNYUv2, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=needle):
        build(tmp_path / "data", own.path, size=size)
    assert not (tmp_path / "data" / "nyuv2").exists()


def test_workers_are_refused(own: FakeNYUv2, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--workers"):
        build(tmp_path / "data", own.path, workers=2)


# ----------------------------------------------------------------------------- bad sources
def test_no_source_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", None)
    assert "train/ and val/" in info.value.message and "image/, label/, depth/ and normal/" in info.value.message
    assert nyuv2.RELEASE_URL in info.value.hint and "mtl prepare nyuv2 --source DIR" in info.value.hint
    assert str(tmp_path / "data" / "raw" / "nyuv2") in info.value.hint


def test_a_missing_folder_is_named(own: FakeNYUv2, tmp_path: Path) -> None:
    shutil.rmtree(own.root / "val" / "normal")
    with pytest.raises(DataError, match=r"missing val/normal/"):
        build(tmp_path / "data", own.path)


def test_a_missing_sample_file_is_named(own: FakeNYUv2, tmp_path: Path) -> None:
    own.file("train", "depth", 3).unlink()
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", own.path)
    assert info.value.message.startswith(f"{own.file('train', 'depth', 3)} is missing")


BAD_FILES = {
    "garbage": ("train", "label", 2, b"not a numpy file", "not a readable .npy file"),
    "truncated": ("val", "depth", 1, npy_bytes(np.zeros((48, 64, 1)))[:200], "not a readable .npy file"),
    "pickled": ("train", "image", 4, npy_bytes(np.array([None, 1], dtype=object), allow_pickle=True), "pickled object array"),
    "label shape": ("train", "label", 1, lambda a: a[..., None], r"label has shape \[48, 64, 1\], expected \[H, W\]"),
    "depth shape": ("val", "depth", 0, lambda a: a[..., 0], r"depth has shape \[48, 64\], expected \[H, W, 1\]"),
    "image size": ("train", "image", 5, lambda a: a[:40], r"image has shape \[40, 64, 3\].*like the first image"),
    "uint8 image": ("train", "image", 3, lambda a: (a * 255).astype(np.uint8), "dtype uint8, expected a float"),
    "bool label": ("val", "label", 2, lambda a: a > 0, "dtype bool"),
    "label 13": ("train", "label", 2, set_at((5, 6), 13), r"label 13.0 at pixel \(row 5, column 6\) is not a class"),
    "label 2.5": ("val", "label", 1, set_at((7, 1), 2.5), "label 2.5 at pixel"),
    "label -2": ("train", "label", 0, set_at((0, 0), -2), "label -2.0 at pixel"),
    "image above 1": (
        "val",
        "image",
        0,
        set_at((3, 4, 1), 1.5),
        r"image value 1.5 at pixel \(row 3, column 4\) is outside \[0, 1\]",
    ),
    "image below 0": ("train", "image", 1, set_at((0, 0, 0), -0.1), "outside"),
    "depth NaN": ("train", "depth", 4, set_at((9, 9, 0), np.nan), r"depth holds nan at pixel \(row 9, column 9\)"),
    "normal inf": ("val", "normal", 1, set_at((2, 3, 2), np.inf), "normal holds inf at pixel"),
    "image NaN": ("train", "image", 2, set_at((1, 1, 0), np.nan), "NaN or infinite"),
    "negative depth": ("val", "depth", 2, set_at((4, 4, 0), -0.5), r"depth -0.5 at pixel \(row 4, column 4\) is negative"),
    "short normal": ("train", "normal", 5, set_at((6, 7), 0.3), r"at pixel \(row 6, column 7\) has length 0.5196"),
    "normal shape": ("train", "normal", 0, lambda a: a[..., :2], r"normal has shape \[48, 64, 2\]"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_each_bad_file_is_one_error_naming_it(case: str, own: FakeNYUv2, tmp_path: Path) -> None:
    split, kind, stem, change, pattern = BAD_FILES[case]
    path = replace_file(own, split, kind, stem, change)
    with pytest.raises(DataError, match=pattern) as info:
        build(tmp_path / "data", own.path)
    assert info.value.message.startswith(f"{path}: "), info.value.message
    assert not (tmp_path / "data" / "nyuv2").exists() and not list((tmp_path / "data").glob(".nyuv2.tmp-*"))


def test_a_bad_member_of_the_zip_is_named(tmp_path: Path) -> None:
    src = make_nyuv2_source(tmp_path / "src", n_train=3, n_val=1, zipped=True)
    with zipfile.ZipFile(src.root, "a") as archive:
        archive.writestr("nyuv2/train/normal/7.npy", npy_bytes(np.zeros((48, 64, 3))))
    with pytest.raises(DataError) as info:
        build(tmp_path / "data", src.path)
    assert info.value.message.startswith(f"nyuv2/train/image/7.npy in {src.root} is missing")


def test_a_source_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nyuv2.zip").write_bytes(b"nope")
    with pytest.raises(DataError, match="not a readable zip file"):
        build(tmp_path / "data", tmp_path)


def test_too_few_training_samples(tmp_path: Path) -> None:
    src = make_nyuv2_source(tmp_path / "src", n_train=1, n_val=1)
    with pytest.raises(DataError, match="at least 2"):
        build(tmp_path / "data", src.path)


# ----------------------------------------------------------------------------- atomicity
def test_an_interrupted_build_leaves_nothing_and_keeps_the_old_dataset(
    own: FakeNYUv2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    calls = []
    original = npy_release.convert_sample

    def interrupt(*args: object) -> dict[str, np.ndarray]:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(npy_release, "convert_sample", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build(data, own.path)
    assert not (data / "nyuv2").exists() and not list(data.glob(".nyuv2.tmp-*"))
    monkeypatch.setattr(npy_release, "convert_sample", original)
    first = build(data, own.path)
    replace_file(own, "val", "label", 2, set_at((0, 0), 99))  # in the last sample read
    with pytest.raises(DataError, match=r"label 99\.0"):
        build(data, own.path, force=True)
    assert load_prepared(data, "nyuv2").meta["files"] == first.meta["files"]
    assert not list(data.glob(".nyuv2.tmp-*"))


# ----------------------------------------------------------------------------- the command line
runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["prepare", "nyuv2", *args])
    return result.exit_code, " ".join(result.output.split())


def test_cli_prepares_and_reports_one_clear_line_on_errors(own: FakeNYUv2, tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, text = cli("--source", str(own.path), "--size", "48", "--data-dir", str(data))
    assert code == 0, text
    assert f"prepared nyuv2 in {data / 'nyuv2'} (train 5, val 1, test 3" in text
    code, text = cli("--source", str(own.path), "--size", "48", "--data-dir", str(data))
    assert code == 0 and "nyuv2 is already prepared" in text
    replace_file(own, "train", "depth", 1, set_at((2, 2, 0), -3.0))
    code, text = cli("--source", str(own.path), "--size", "48", "--data-dir", str(tmp_path / "other"))
    assert code == 1 and text.count("Error:") == 1 and "Traceback" not in text
    assert f"Error: {own.file('train', 'depth', 1)}: depth -3.0 at pixel (row 2, column 2) is negative" in text


def test_cli_without_a_source_says_where_to_get_it(tmp_path: Path) -> None:
    code, text = cli("--data-dir", str(tmp_path / "data"))
    assert code == 1 and text.count("Error:") == 1 and "Traceback" not in text
    assert "github.com/lorenmt/mtan" in text and "mtl prepare nyuv2 --source DIR" in text
    assert not (tmp_path / "data" / "nyuv2").exists()


def test_source_may_name_the_zip_itself(tmp_path: Path) -> None:
    src = make_nyuv2_source(tmp_path / "src", n_train=3, n_val=1, zipped=True)
    result = build(tmp_path / "data", src.root)
    assert result.meta["source"]["layout"] == "zip"
    assert_splits_equal(loaded_splits(tmp_path / "data", "nyuv2"), src.expected(seed=0))
