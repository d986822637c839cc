"""Disk full or a read-only output directory: one clear error line, and nothing already written is
corrupted (tests run as root, where chmod stops nothing, so the OS errors are injected)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.training import load_checkpoint
from tests.cli.test_bad_input import assert_clean_error
from tests.integration._reliability import assert_same_run, metrics, recipe, trainer

runner = CliRunner()
REAL_REPLACE = os.replace
REAL_MKDIR = os.mkdir


def fail_replace(monkeypatch: pytest.MonkeyPatch, code: int, when: Any) -> None:
    """os.replace(src, dst) raises OSError(code) when `when(dst)` is true (the temp file is already written)."""

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if when(Path(dst)):
            raise OSError(code, os.strerror(code), str(dst))
        REAL_REPLACE(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_disk_full_mid_training_keeps_last_checkpoint_and_resume_works(data_dir, tmp_path, write_recipe, monkeypatch) -> None:
    raw = recipe(data_dir, tmp_path / "out", epochs=3)
    reference = trainer(recipe(data_dir, tmp_path / "ref", epochs=3)).run()
    saves = {"n": 0}

    def second_last_pt(dst: Path) -> bool:
        saves["n"] += dst.name == "last.pt"
        return dst.name == "last.pt" and saves["n"] >= 2

    fail_replace(monkeypatch, errno.ENOSPC, second_last_pt)
    assert_clean_error(["train", str(write_recipe(raw)), "-q"], "last.pt: No space left on device", "free some disk space")
    (run_dir,) = (tmp_path / "out").iterdir()
    assert load_checkpoint(run_dir / "last.pt")["position"]["epoch"] == 2  # epoch 1's checkpoint, intact
    assert not list(run_dir.glob(".*.tmp"))
    assert [rec["epoch"] for rec in metrics(run_dir)] == [1, 2]
    monkeypatch.setattr(os, "replace", REAL_REPLACE)  # space freed
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert_same_run(reference, run_dir)


def test_read_only_file_system_leaves_existing_results_unchanged(data_dir, tmp_path, monkeypatch) -> None:
    run_dir = trainer(recipe(data_dir, tmp_path / "out", epochs=1)).run()
    assert runner.invoke(app, ["eval", str(run_dir), "--device", "cpu"]).exit_code == 0
    report = tmp_path / "report"  # compare --out writes a directory of tables, figures and report.html
    table = report / "tables.txt"
    assert runner.invoke(app, ["compare", str(tmp_path / "out"), "--out", str(report)]).exit_code == 0
    before, table_before = snapshot(run_dir), table.read_bytes()
    (run_dir / "eval-test-best.json").write_text('{"old": true}\n')
    before = snapshot(run_dir)

    fail_replace(monkeypatch, errno.EROFS, lambda dst: True)
    assert_clean_error(["eval", str(run_dir), "--device", "cpu"], "eval-test-best.json: Read-only file system", "read-only")
    assert_clean_error(["compare", str(tmp_path / "out"), "--out", str(report)], "Read-only file system")
    assert snapshot(run_dir) == before and table.read_bytes() == table_before
    assert not list(run_dir.glob(".*.tmp")) and not list(report.rglob(".*.tmp"))


def test_read_only_output_directory_for_a_new_run(data_dir, tmp_path, write_recipe, monkeypatch) -> None:
    path = write_recipe(recipe(data_dir, tmp_path / "out", epochs=1))

    def mkdir(target: Any, *args: Any, **kwargs: Any) -> None:
        if "out" in Path(target).parts:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
        REAL_MKDIR(target, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert_clean_error(["train", str(path), "-q"], "Read-only file system", "choose a writable directory")
