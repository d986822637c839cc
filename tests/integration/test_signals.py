"""Real signals to a real `python -m mtlcli train` process: SIGINT/SIGTERM save and say how to resume;
SIGKILL loses at most the work since the last checkpoint. Every resumed run ends bitwise identical
to an uninterrupted one."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.training import load_checkpoint
from tests.integration._reliability import assert_same_run, metrics, recipe, start_cli, trainer, wait_for_line

EPOCHS = 5  # batch 4: 27 steps per epoch, about 0.2 s each: long enough to be interrupted


@pytest.fixture(scope="module")
def setup(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The recipe file the processes train, and the run directory of an uninterrupted run of it."""
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1); module fixtures run before conftest's
    root = tmp_path_factory.mktemp("signals")
    raw = recipe(data_dir, root / "out", epochs=EPOCHS, batch_size=4)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, trainer(raw).run()


def only_run(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_prints_how_to_resume_and_resume_matches(setup, tmp_path, signum) -> None:
    recipe_path, reference = setup
    out = tmp_path / "out"
    proc = start_cli("train", str(recipe_path), "--out", str(out), "-q")
    wait_for_line(proc, "epoch 1/")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    run_dir = only_run(out)
    assert f"training stopped by {signal.Signals(signum).name}" in stderr
    assert f"resume with `mtl train --resume {run_dir}`" in stderr.replace("\n", "")
    assert not (run_dir / "summary.json").exists()
    stopped_at = load_checkpoint(run_dir / "last.pt")["position"]["epoch"]
    assert 2 <= stopped_at <= EPOCHS

    if signum == signal.SIGINT:  # resume through a second process
        proc = start_cli("train", "--resume", str(run_dir), "-q")
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stdout.strip().splitlines()[-1] == str(run_dir)
    else:  # resume in-process through the CLI
        result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "-q"])
        assert result.exit_code == 0, result.output
    assert [rec["epoch"] for rec in metrics(run_dir)] == list(range(1, EPOCHS + 1))
    assert_same_run(reference, run_dir)


def test_sigkill_loses_at_most_the_work_since_the_last_checkpoint(setup, tmp_path) -> None:
    recipe_path, reference = setup
    out = tmp_path / "out"
    proc = start_cli("train", str(recipe_path), "--out", str(out), "-q")
    wait_for_line(proc, "epoch 2/")
    proc.kill()
    proc.communicate(timeout=60)
    run_dir = only_run(out)
    saved = int(load_checkpoint(run_dir / "last.pt")["position"]["epoch"]) - 1
    logged = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    assert saved >= 2  # the epoch-2 checkpoint was written before its line was printed
    assert max(logged) - saved <= 1  # at most the epoch in flight is lost
    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert [rec["epoch"] for rec in metrics(run_dir)] == list(range(1, EPOCHS + 1))
    assert_same_run(reference, run_dir)
