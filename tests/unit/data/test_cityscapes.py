"""`mtl prepare cityscapes` on a miniature release in the official formats, against an independent slow reference."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data import cityscapes
from mtlcli.data.registry import CITYSCAPES, CITYSCAPES_CATEGORIES, CITYSCAPES_CLASSES, Prepared, PrepareRequest
from mtlcli.data.store import load_prepared
from mtlcli.errors import DataError
from tests.cityscapes_fixture import (
    FakeCityscapes,
    make_cityscapes_source,
    offsets_slow,
    png_bytes,
    semantic_slow,
    write_png,
)

SIZE = 16  # 16 x 32 from 32 x 64 frames
FRAMES = {"train": 8, "val": 2, "test": 1}  # per city: 16 train (1 held out), 4 val -> test, 1 release test (ignored)


def prepare(data_dir: Path, source: Path | None, *, size: int = SIZE, seed: int = 0, workers: int = 1, **kw: Any) -> Prepared:
    request = PrepareRequest(data_dir=data_dir, size=size, seed=seed, workers=workers, **kw)
    return cityscapes.prepare_cityscapes(CITYSCAPES, request, source)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeCityscapes:
    return make_cityscapes_source(tmp_path_factory.mktemp("cityscapes") / "src", frames=FRAMES, seed=3)


@pytest.fixture(scope="module")
def built(fake: FakeCityscapes, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """The release prepared once at SIZE with seed 0 (read only)."""
    return prepare(tmp_path_factory.mktemp("data"), fake.path)


@pytest.fixture
def own(tmp_path: Path) -> FakeCityscapes:
    """A release of the test's own, to damage."""
    return make_cityscapes_source(tmp_path / "src", frames={"train": 2, "val": 1}, seed=4)


def split_stems(fake: FakeCityscapes, meta: dict[str, Any]) -> dict[str, list[str]]:
    held = meta["validation"]["frames"]
    return {"train": [s for s in fake.stems("train") if s not in held], "val": held, "test": fake.stems("val")}


def assert_matches(fake: FakeCityscapes, prepared: Prepared, size: int = SIZE) -> None:
    """Every prepared array equals the fixture's slow reference (NaN where it has NaN)."""
    dataset = load_prepared(prepared.path.parent, "cityscapes")  # checksums and shapes verified
    for split, stems in split_stems(fake, prepared.meta).items():
        expected = fake.expected(stems, size)
        for key, want in expected.items():
            got = dataset.images[split] if key == "images" else dataset.targets[split][key]
            assert got.dtype == want.dtype and got.shape == want.shape, (split, key)
            assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), (split, key)


# ----------------------------------------------------------------------------- what is built
def test_arrays_equal_the_slow_reference(fake: FakeCityscapes, built: Prepared) -> None:
    assert built.built and built.path.name == "cityscapes"
    assert_matches(fake, built)
    meta = built.meta
    assert meta["counts"] == {"train": 15, "val": 1, "test": 4} and meta["release_counts"] == {"train": 16, "val": 4}
    assert (meta["size"], meta["width"], meta["seed"]) == (SIZE, 2 * SIZE, 0)
    assert meta["classes"] == list(CITYSCAPES_CLASSES) and meta["categories"] == list(CITYSCAPES_CATEGORIES)
    assert [t["name"] for t in meta["tasks"]] == ["semantic", "category", "instance", "disparity"]
    assert meta["targets"] == {k: {"kind": v} for k, v in CITYSCAPES.target_kinds.items()}
    assert set(meta["resize"]) == set(cityscapes.ARRAYS) and meta["source"]["layout"] == dict.fromkeys(
        cityscapes.PACKAGES, "folder"
    )
    assert len(meta["mean"]) == len(meta["std"]) == 3 and all(0.4 < m < 0.6 for m in meta["mean"])  # uniform noise
    assert len(meta["files"]) == 15 and not list(built.path.glob("*.json.*")) and not (built.path / "done.json").exists()
    dataset = load_prepared(built.path.parent, "cityscapes")
    instance = dataset.targets["train"]["instance"]
    assert np.isfinite(instance).any() and np.isnan(instance).any()  # thing pixels and the rest
    assert np.isnan(dataset.targets["train"]["disparity"]).any() and (dataset.targets["train"]["semantic"] == 255).any()


def test_the_validation_split_is_seeded_held_out_of_train_and_recorded(
    fake: FakeCityscapes, built: Prepared, tmp_path: Path
) -> None:
    validation = built.meta["validation"]
    assert validation["from"] == "train" and validation["seed"] == 0 and validation["fraction"] == 275 / 2975
    held = validation["frames"]
    assert len(held) == 1 and set(held) <= set(fake.stems("train"))  # 16 * 275 / 2975 = 1.48
    again = prepare(tmp_path / "again", fake.path, seed=0)
    other = prepare(tmp_path / "other", fake.path, seed=1)
    assert again.meta["validation"]["frames"] == held and again.meta["files"] == built.meta["files"]
    assert other.meta["validation"]["frames"] != held and other.meta["seed"] == 1
    assert_matches(fake, other)  # train = the release's train less the held-out frames, test = the release's val


def test_validation_count_is_the_papers_275_of_2975() -> None:
    assert [cityscapes.validation_count(n) for n in (2, 16, 17, 2975)] == [1, 1, 2, 275]


def test_zips_and_a_mix_of_zips_and_folders_give_the_same_bytes(built: Prepared, tmp_path: Path) -> None:
    for zipped in (True, ("gtFine",)):
        fake = make_cityscapes_source(tmp_path / f"src-{zipped}", frames=FRAMES, seed=3, zipped=zipped)
        result = prepare(tmp_path / f"data-{zipped}", fake.path)
        assert result.meta["files"] == built.meta["files"]
        kinds = result.meta["source"]["layout"]
        assert [p for p, kind in kinds.items() if kind == "zip"] == list(fake.zipped)


def test_another_scale_is_resampled_by_pixel_centres(tmp_path: Path) -> None:
    fake = make_cityscapes_source(tmp_path / "src", frames={"train": 2, "val": 1}, size=(32, 64), seed=9)
    assert_matches(fake, prepare(tmp_path / "data", fake.path, size=24), size=24)  # 32 -> 24: not an integer factor


def test_one_and_two_workers_are_byte_identical(
    fake: FakeCityscapes, built: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cityscapes, "CHUNK_FRAMES", 3)  # several chunks per split
    two = prepare(tmp_path / "two", fake.path, workers=2)
    assert two.meta["files"] == built.meta["files"]


def test_a_bad_file_is_reported_from_a_worker_process(own: FakeCityscapes, tmp_path: Path) -> None:
    frame = own.frames["val"][0]
    labels = frame.label.copy()
    labels[3, 5] = 77
    write_png(own.file(frame, "label"), labels)
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "data", own.path, workers=2)
    assert str(own.file(frame, "label")) in error.value.message and "label id 77 at pixel (y=3, x=5)" in error.value.message
    assert not (tmp_path / "data" / "cityscapes").exists()


def test_the_label_tables_follow_cityscapes_scripts() -> None:
    ids = np.arange(34, dtype=np.uint8).reshape(1, 34)
    semantic, category = semantic_slow(ids)
    assert np.array_equal(cityscapes.TRAIN_IDS[ids], semantic) and np.array_equal(cityscapes.CATEGORY_IDS[ids], category)
    assert (cityscapes.TRAIN_IDS[:34] != 255).sum() == 19 and (cityscapes.CATEGORY_IDS[:34] == 255).sum() == 7  # void 0..6


def test_offsets_point_to_the_centroid() -> None:
    ids = np.full((4, 6), 7, dtype=np.uint16)  # road
    ids[0:2, 0:2] = 26001  # a car: centroid (0.5, 0.5)
    ids[3, 3:6] = 24000  # a person: centroid (3, 4)
    ids[2, 0] = 26  # a crowd of cars: no instance
    ids[2, 5] = 29000  # a caravan: no train id
    offsets = cityscapes.instance_offsets(ids)
    assert np.array_equal(offsets, offsets_slow(ids), equal_nan=True)
    assert offsets[:, 0, 0].tolist() == [0.5, 0.5] and offsets[:, 3, 5].tolist() == [0.0, -1.0]
    assert np.isfinite(offsets[0]).sum() == 7


def test_the_fixture_writes_the_official_png_formats(own: FakeCityscapes) -> None:
    frame = own.frames["train"][0]
    expected = {"image": (8, 2), "label": (8, 0), "instance": (16, 0), "disparity": (16, 0)}
    for part, (depth, color) in expected.items():
        data = own.file(frame, part).read_bytes()
        assert cityscapes.png_header(data)[2:] == (depth, color), part
        decoded = cityscapes.decode_png(data, part, cityscapes.PART[part])
        assert np.array_equal(decoded, getattr(frame, part)), part


# ----------------------------------------------------------------------------- already prepared, sizes, interruptions
def test_already_prepared_is_not_rebuilt_and_another_seed_needs_force(fake: FakeCityscapes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = prepare(data, fake.path)
    again = prepare(data, tmp_path / "nowhere")  # the source is not read
    assert not again.built and again.meta == first.meta
    with pytest.raises(DataError, match="pass --force to rebuild it with size 16 and seed 5"):
        prepare(data, fake.path, seed=5)
    with pytest.raises(DataError, match="--force"):
        prepare(data, fake.path, size=24)
    rebuilt = prepare(data, fake.path, seed=5, force=True)
    assert rebuilt.built and rebuilt.meta["seed"] == 5 and load_prepared(data, "cityscapes").meta["seed"] == 5


@pytest.mark.parametrize(("size", "words"), [(8, "16..1024"), (1040, "16..1024"), (20, "multiple of 8")])
def test_sizes_are_checked(size: int, words: str, own: FakeCityscapes, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=words):
        prepare(tmp_path / "data", own.path, size=size)


def test_an_interrupted_build_leaves_no_dataset_and_resumes(
    fake: FakeCityscapes, built: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cityscapes, "CHUNK_FRAMES", 4)
    record = cityscapes.PartialBuild.record
    calls = []

    def interrupted(self: cityscapes.PartialBuild, job: cityscapes.Job) -> None:
        calls.append(job[:2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        record(self, job)

    monkeypatch.setattr(cityscapes.PartialBuild, "record", interrupted)
    data = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        prepare(data, fake.path)
    assert not (data / "cityscapes").exists() and (data / f".cityscapes.partial-{SIZE}-0" / "done.json").is_file()
    monkeypatch.setattr(cityscapes.PartialBuild, "record", record)
    resumed = prepare(data, fake.path)
    assert resumed.meta["resumed_frames"] == 4 and resumed.meta["files"] == built.meta["files"]
    assert not list(data.glob(".cityscapes.partial-*"))


def test_an_interrupted_rebuild_keeps_the_old_dataset(
    own: FakeCityscapes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    old = prepare(data, own.path)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cityscapes, "channel_stats", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare(data, own.path, seed=2, force=True)
    assert load_prepared(data, "cityscapes").meta["files"] == old.meta["files"]


# ----------------------------------------------------------------------------- bad input: one DataError naming the file
def _delete_instance(fake: FakeCityscapes) -> tuple[str, str]:
    path = fake.file(fake.frames["train"][1], "instance")
    path.unlink()
    return str(path), "is missing (the companion of"


def _empty_split(fake: FakeCityscapes) -> tuple[str, str]:
    for package in cityscapes.PACKAGES:
        shutil.rmtree(fake.path / package / "val")
    return str(fake.path / "leftImg8bit" / "val"), "the release's val split has no frames"


def _truncated(fake: FakeCityscapes) -> tuple[str, str]:
    path = fake.file(fake.frames["val"][0], "image")
    path.write_bytes(path.read_bytes()[:200])
    return str(path), "not a readable PNG"


def _not_png(fake: FakeCityscapes) -> tuple[str, str]:
    path = fake.file(fake.frames["train"][0], "disparity")
    path.write_bytes(b"this is not a PNG file, just text" * 4)
    return str(path), "not a PNG file"


def _label_rgb(fake: FakeCityscapes) -> tuple[str, str]:
    frame = fake.frames["train"][0]
    write_png(fake.file(frame, "label"), np.repeat(frame.label[..., None], 3, axis=2))
    return str(fake.file(frame, "label")), ": 8-bit RGB PNG, expected 8-bit grayscale"


def _disparity_8bit(fake: FakeCityscapes) -> tuple[str, str]:
    frame = fake.frames["val"][0]
    write_png(fake.file(frame, "disparity"), (frame.disparity // 256).astype(np.uint8))
    return str(fake.file(frame, "disparity")), ": 8-bit grayscale PNG, expected 16-bit grayscale"


def _instance_8bit(fake: FakeCityscapes) -> tuple[str, str]:
    frame = fake.frames["train"][1]
    write_png(fake.file(frame, "instance"), frame.label)
    return str(fake.file(frame, "instance")), "expected 16-bit grayscale"


def _sizes_differ(fake: FakeCityscapes) -> tuple[str, str]:
    frame = fake.frames["train"][0]
    write_png(fake.file(frame, "disparity"), frame.disparity[::2, ::2].copy())
    return str(fake.file(frame, "disparity")), f"is 32x16, but {fake.file(frame, 'image')} is 64x32"


def _label_out_of_range(fake: FakeCityscapes) -> tuple[str, str]:
    frame = fake.frames["train"][1]
    labels = frame.label.copy()
    labels[10, 20] = 40
    write_png(fake.file(frame, "label"), labels)
    return str(fake.file(frame, "label")), "label id 40 at pixel (y=10, x=20) is outside 0..33"


def _instance_out_of_range(fake: FakeCityscapes) -> tuple[str, str]:
    frame = fake.frames["val"][0]
    ids = frame.instance.copy()
    ids[0, 0] = 35001
    write_png(fake.file(frame, "instance"), ids)
    return str(fake.file(frame, "instance")), "instance id 35001 at pixel (y=0, x=0) has label id 35"


BAD_INPUTS: dict[str, Callable[[FakeCityscapes], tuple[str, str]]] = {
    "missing companion": _delete_instance,
    "empty split": _empty_split,
    "truncated png": _truncated,
    "not a png": _not_png,
    "labelIds rgb": _label_rgb,
    "disparity 8-bit": _disparity_8bit,
    "instanceIds 8-bit": _instance_8bit,
    "sizes differ": _sizes_differ,
    "label id out of range": _label_out_of_range,
    "instance id out of range": _instance_out_of_range,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_data_error_naming_the_file(case: str, own: FakeCityscapes, tmp_path: Path) -> None:
    path, words = BAD_INPUTS[case](own)
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "data", own.path)
    assert path in error.value.message and words in error.value.message, error.value.message
    assert not (tmp_path / "data" / "cityscapes").exists()


def test_a_bad_member_of_a_zip_is_named_with_its_zip(tmp_path: Path) -> None:
    fake = make_cityscapes_source(tmp_path / "src", frames={"train": 2, "val": 1}, zipped=True, seed=4)
    frame = fake.frames["train"][0]
    labels = frame.label.copy()
    labels[1, 1] = 200
    archive = fake.zip_path("gtFine")
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(tmp_path / "new.zip", "w") as new:
        for info in old.infolist():
            new.writestr(info, png_bytes(labels) if info.filename == frame.member("label") else old.read(info))
    (tmp_path / "new.zip").replace(archive)
    with pytest.raises(DataError, match=f"{frame.member('label')} in {archive}: label id 200"):
        prepare(tmp_path / "data", fake.path)


def test_an_unreadable_zip_is_named(own: FakeCityscapes, tmp_path: Path) -> None:
    shutil.rmtree(own.path / "disparity")
    (own.path / "disparity_trainvaltest.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(DataError, match=r"disparity_trainvaltest\.zip: not a readable zip file") as error:
        prepare(tmp_path / "data", own.path)
    assert "download disparity_trainvaltest.zip again" in (error.value.hint or "")


def test_no_source_says_where_the_release_is(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "data", None)
    message, hint = error.value.message, error.value.hint or ""
    assert str(tmp_path / "data" / "raw" / "cityscapes") in message
    assert all(f"{p}/ (or {p}_trainvaltest.zip)" in message for p in cityscapes.PACKAGES)
    assert "https://www.cityscapes-dataset.com/downloads/" in hint and "registration" in hint
    assert "mtl prepare cityscapes --source DIR" in hint


def test_the_default_source_is_data_dir_raw_cityscapes(tmp_path: Path) -> None:
    make_cityscapes_source(tmp_path / "data" / "raw" / "cityscapes", frames={"train": 2, "val": 1}, seed=4)
    assert prepare(tmp_path / "data", None).meta["counts"] == {"train": 3, "val": 1, "test": 2}


def test_a_missing_package_is_named(own: FakeCityscapes, tmp_path: Path) -> None:
    shutil.rmtree(own.path / "disparity")
    with pytest.raises(DataError, match=r"missing disparity/ \(or disparity_trainvaltest.zip\) \(found leftImg8bit, gtFine\)"):
        prepare(tmp_path / "data", own.path)


# ----------------------------------------------------------------------------- the command line
def test_the_command_line(own: FakeCityscapes, tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    args = ["prepare", "cityscapes", "--source", str(own.path), "--size", "16", "--workers", "1"]
    result = runner.invoke(app, [*args, "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert f"prepared cityscapes in {data / 'cityscapes'}" in " ".join(result.output.split())
    frame = own.frames["train"][0]
    write_png(own.file(frame, "label"), np.repeat(frame.label[..., None], 3, axis=2))
    result = runner.invoke(app, [*args, "--data-dir", str(tmp_path / "other")])
    text = result.output
    assert result.exit_code == 1 and "Traceback" not in text and text.count("Error:") == 1
    error_line = next(line for line in text.splitlines() if line.startswith("Error:"))
    assert str(own.file(frame, "label")) in error_line and "expected 8-bit grayscale" in error_line


def test_an_empty_source_and_zips_extracted_into_their_own_folders(own: FakeCityscapes, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no Cityscapes release there") as error:
        prepare(tmp_path / "data", empty)
    assert "https://www.cityscapes-dataset.com/downloads/" in (error.value.hint or "")
    nested = own.path / "gtFine_trainvaltest"  # `unzip gtFine_trainvaltest.zip -d gtFine_trainvaltest`
    nested.mkdir()
    (own.path / "gtFine").rename(nested / "gtFine")
    console = Console(file=io.StringIO(), width=200)
    result = prepare(tmp_path / "data", own.path, console=console)
    assert result.meta["source"]["packages"]["gtFine"]["path"] == str(nested)
    assert "the official 2,975 / 500" in console.file.getvalue()
