"""Bad input gets one clear 'Error: ...' line (and maybe a hint) and a non-zero exit, never a traceback."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.io import sha256_file
from mtlcli.training import TrainingInterrupted
from tests.integration._reliability import recipe, signal_at_step, trainer

runner = CliRunner()


def assert_clean_error(args: list[str], *needles: str) -> str:
    """Run the CLI; it must fail with one 'Error:' line naming the problem and no traceback."""
    result = runner.invoke(app, args)
    text = result.output
    assert result.exit_code not in (0, None), text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    assert len(re.findall(r"^Error: ", text, flags=re.MULTILINE)) == 1, text
    lines = [line for line in text.splitlines() if line.strip()]
    after = lines[next(i for i, line in enumerate(lines) if line.startswith("Error: ")) + 1 :]
    # then only a hint, or the indented list of a recipe's problems
    assert all(line.startswith(("Hint: ", "  ")) for line in after), text
    assert sum(line.startswith("Hint: ") for line in after) <= 1, text
    squashed = "".join(text.split())  # rich wraps long lines, even inside paths
    for needle in needles:
        assert "".join(needle.split()) in squashed, (needle, text)
    return text


@pytest.fixture(scope="module")
def runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished run and one interrupted in epoch 2 (copied by the tests that damage them)."""
    root = tmp_path_factory.mktemp("runs")
    finished = trainer(recipe(data_dir, root / "out", epochs=1)).run()
    t = trainer(recipe(data_dir, root / "out", epochs=2))
    signal_at_step(t, 6)
    with pytest.raises(TrainingInterrupted):
        t.run()
    return {"finished": finished, "interrupted": t.run_dir}


def copy_run(runs: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs[name], tmp_path / name))


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# ---------------------------------------------------------------- recipes
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "must be a mapping of sections (data, tasks, method, ...), got nothing"),
        ("- a\n- b\n", "got list"),
        ("42", "got int"),
        ("data: [\n", "broken YAML"),
        (b"\xff\xfe\x00\x81 binary", "cannot read recipe"),
        ("data: {name: multifashion}\ntasks: abc\nmethod: {name: uniform}\noptim: {lr: 0.1}\n", "tasks: must be a list"),
        ("data: {name: multifashion}\ntasks: [{name: left}]\nmethod: {name: uniform}\noptim: {lr: .inf}\n", "finite"),
        ("data: {name: multifashion}\ntasks: [{name: left}]\nmethod: {name: os.system}\noptim: {lr: 1}\n", "unknown method"),
        ("data: {name: multifashion}\ntasks: [{name: left}]\nmethod: {name: uniform}\noptim: {lr: 1}\ntrain: 3\n", "train"),
    ],
)
def test_bad_recipes(tmp_path, content, needle) -> None:
    assert_clean_error(["train", str(write(tmp_path / "r.yaml", content))], needle)


def test_missing_recipe_and_a_directory(tmp_path) -> None:
    assert_clean_error(["train", str(tmp_path / "nope.yaml")], "does not exist")
    assert_clean_error(["train", str(tmp_path)], "is a directory")


# ---------------------------------------------------------------- prepared data
def damaged_data(data_dir: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    copy = Path(shutil.copytree(data_dir, tmp_path / "data"))
    damage(copy / "multifashion")
    return copy


def _truncate(d: Path) -> None:
    f = d / "train_images.npy"
    f.write_bytes(f.read_bytes()[:100])


def _rehash(d: Path, name: str) -> None:
    meta = json.loads((d / "meta.json").read_text())
    meta["files"][name] = sha256_file(d / name)
    (d / "meta.json").write_text(json.dumps(meta))


def _corrupt_with_hash(d: Path) -> None:
    (d / "train_labels.npy").write_bytes(b"\x93NUMPY garbage that is no header")
    _rehash(d, "train_labels.npy")


def _wrong_shape(d: Path) -> None:
    np.save(d / "val_labels.npy", np.zeros(12, dtype=np.uint8))
    _rehash(d, "val_labels.npy")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_truncate, "train_images.npy is corrupt (sha256 differs"),
        (lambda d: (d / "test_labels.npy").unlink(), "test_labels.npy is missing"),
        (lambda d: write(d / "meta.json", "{not json"), "has no valid meta.json"),
        (lambda d: write(d / "meta.json", "[1, 2]"), "has no valid meta.json"),
        (lambda d: write(d / "meta.json", json.dumps({"format": 1, "files": 3})), "has no valid meta.json"),
        (_corrupt_with_hash, "cannot read"),
        (_wrong_shape, "labels has shape"),
        (lambda d: shutil.rmtree(d), "is not prepared"),
    ],
)
def test_bad_prepared_data(data_dir, tmp_path, write_recipe, damage, needle) -> None:
    data = damaged_data(data_dir, tmp_path, damage)
    path = write_recipe(recipe(data, tmp_path / "out", epochs=1))
    assert_clean_error(["train", str(path), "-q"], needle)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_raw_idx_files(raw_dirs, tmp_path, compress) -> None:
    source = Path(shutil.copytree(raw_dirs["fashion-mnist"], tmp_path / "raw"))
    name = "train-images-idx3-ubyte.gz"
    if not compress:
        (source / name[:-3]).write_bytes(gzip.decompress((source / name).read_bytes()))
        (source / name).unlink()
        name = name[:-3]
    blob = (source / name).read_bytes()
    (source / name).write_bytes(blob[: len(blob) // 2])
    needle = "corrupt or truncated gzip" if compress else "is truncated"
    args = ["prepare", "multifashion", "--source", str(source), "--data-dir", str(tmp_path / "d")]
    assert_clean_error(args, needle)


def test_missing_source_directory(tmp_path) -> None:
    assert_clean_error(["prepare", "multifashion", "--source", str(tmp_path / "nope"), "--data-dir", str(tmp_path)])


# ---------------------------------------------------------------- run directories and checkpoints
def test_not_a_run_directory(tmp_path) -> None:
    assert_clean_error(["eval", str(tmp_path)], "is not a run directory")
    assert_clean_error(["eval", str(tmp_path / "nope")], "does not exist")
    assert_clean_error(["train", "--resume", str(tmp_path)], "is not a run directory")
    assert_clean_error(["compare", str(tmp_path / "nope")], "does not exist")


def test_damaged_run_recipe(runs, tmp_path) -> None:
    run = copy_run(runs, "finished", tmp_path)
    write(run / "recipe.yaml", "data: [")
    assert_clean_error(["eval", str(run)], "is damaged")
    write(run / "recipe.yaml", "data: {name: nope}")
    assert_clean_error(["eval", str(run)], "data.name")
    interrupted = copy_run(runs, "interrupted", tmp_path)
    write(interrupted / "summary.json", "[1, 2]")
    assert_clean_error(["train", "--resume", str(interrupted)], "summary.json is damaged")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not a checkpoint", "incomplete"])
def test_corrupt_checkpoints(runs, tmp_path, damage) -> None:
    finished, interrupted = copy_run(runs, "finished", tmp_path), copy_run(runs, "interrupted", tmp_path)
    for path in (finished / "best.pt", interrupted / "last.pt"):
        blob = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(blob[: len(blob) // 2])
        elif damage == "garbage":
            path.write_bytes(os.urandom(len(blob)))
        elif damage == "empty":
            path.write_bytes(b"")
        elif damage == "incomplete":
            torch.save({"format": 1, "model": {}}, path)
        else:
            torch.save({"weights": torch.zeros(3)}, path)
    needle = {"not a checkpoint": "is not an mtl checkpoint", "incomplete": "is not a complete mtl checkpoint"}.get(
        damage, "is corrupt or unreadable"
    )
    assert_clean_error(["eval", str(finished)], needle)
    assert_clean_error(["train", "--resume", str(interrupted), "-q"], needle)


def test_checkpoint_of_another_model(runs, tmp_path, data_dir) -> None:
    run = copy_run(runs, "interrupted", tmp_path)
    other = trainer(recipe(data_dir, tmp_path / "o", epochs=1) | {"model": {"hidden": 7}})
    torch.save(other.checkpoint(), run / "last.pt")
    assert_clean_error(["train", "--resume", str(run), "-q"], "does not fit this run")


def test_pickled_code_in_a_checkpoint_never_runs(runs, tmp_path) -> None:
    run = copy_run(runs, "interrupted", tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 1, "payload": Evil()}, run / "last.pt")
    assert_clean_error(["train", "--resume", str(run), "-q"], "is corrupt or unreadable")
    assert not marker.exists()


def test_resume_refusals(runs, tmp_path) -> None:
    assert_clean_error(["train", "--resume", str(runs["finished"])], "has already finished")
    run = copy_run(runs, "interrupted", tmp_path)
    assert_clean_error(["train", "recipes/multifashion.yaml", "--resume", str(run)], "--resume takes no recipe")
    (run / "last.pt").unlink()
    assert_clean_error(["train", "--resume", str(run)], "no checkpoint to resume from")


def test_recipe_file_is_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = f"!!python/object/apply:os.system ['touch {marker}']\n"
    assert_clean_error(["train", str(write(tmp_path / "r.yaml", evil))], "broken YAML")
    assert not marker.exists()
