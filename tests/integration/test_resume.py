"""Resume: an interrupted-then-resumed run ends bitwise identical to an uninterrupted one (CPU)."""

from __future__ import annotations

import random
import signal

import numpy as np
import pytest
import torch

from mtlcli.errors import RunError
from mtlcli.runs import RunLock
from mtlcli.training import Trainer, TrainingInterrupted, load_checkpoint
from mtlcli.training import loop as loop_module
from tests.integration._reliability import assert_same_run, interrupted_then_resumed, metrics, recipe, signal_at_step, trainer

STEPS = 4  # 108 tiny training images in batches of 32


@pytest.mark.parametrize("method", ["uniform", "mgda-ub"])
def test_two_epochs_equal_one_plus_resumed_one(data_dir, tmp_path, method) -> None:
    raw = recipe(data_dir, tmp_path / "out", epochs=2)
    raw["method"] = {"name": method}
    reference = trainer(raw).run()
    # the signal arrives during the last step of epoch 1: that epoch ends and is saved, then it stops
    resumed, message = interrupted_then_resumed(raw, STEPS)
    assert "at the end of epoch 1" in message
    assert [rec["epoch"] for rec in metrics(resumed.run_dir)] == [1, 2]
    assert_same_run(reference, resumed.run_dir)


def test_mid_epoch_interruption_resumes_bitwise(data_dir, tmp_path) -> None:
    raw = recipe(data_dir, tmp_path / "out", epochs=3)
    reference = trainer(raw).run()
    resumed, message = interrupted_then_resumed(raw, STEPS + 2, signal.SIGTERM)  # epoch 2, batch 2
    assert "SIGTERM at epoch 2, batch 2" in message
    assert_same_run(reference, resumed.run_dir)


def test_checkpoint_holds_every_rng_and_loads_weights_only(data_dir, tmp_path) -> None:
    t = trainer(recipe(data_dir, tmp_path / "out", epochs=1))
    random.random(), np.random.random()  # move the python and numpy generators off their seeds
    state = t.checkpoint()
    expected = (random.random(), float(np.random.random()), torch.rand(1))
    t.restore(state)
    assert (random.random(), float(np.random.random())) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
    t.run()
    loaded = load_checkpoint(t.run_dir / "last.pt")  # torch.load(weights_only=True) inside
    assert set(loaded["rng"]) >= {"torch", "shuffle", "python", "numpy"}


def test_checkpoint_every_n_epochs_and_always_at_the_end(data_dir, tmp_path, monkeypatch) -> None:
    saved: list[tuple[str, int]] = []
    real = loop_module.save_checkpoint

    def spy(path, state) -> None:
        saved.append((path.name, int(state["position"]["epoch"]) - 1))
        real(path, state)

    monkeypatch.setattr(loop_module, "save_checkpoint", spy)
    trainer(recipe(data_dir, tmp_path / "out", epochs=5, checkpoint_every=2)).run()
    assert [epoch for name, epoch in saved if name == "last.pt"] == [2, 4, 5]


def test_interruption_between_checkpoints_still_saves_last(data_dir, tmp_path) -> None:
    raw = recipe(data_dir, tmp_path / "out", epochs=3, checkpoint_every=5)
    reference = trainer(raw).run()
    resumed, _ = interrupted_then_resumed(raw, STEPS)  # end of epoch 1: no scheduled checkpoint there
    assert_same_run(reference, resumed.run_dir)


def test_resume_drops_lines_after_the_checkpoint_and_a_torn_tail(data_dir, tmp_path) -> None:
    raw = recipe(data_dir, tmp_path / "out", epochs=2)
    reference = trainer(raw).run()
    first = trainer(raw)
    signal_at_step(first, STEPS)
    with pytest.raises(TrainingInterrupted):
        first.run()
    run_dir = first.run_dir
    with open(run_dir / "metrics.jsonl", "a") as handle:  # what a kill -9 mid-append leaves
        handle.write('{"epoch": 2, "lr": 0.0')
    (run_dir / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    Trainer.resume(run_dir, show_progress=False).run()
    assert [rec["epoch"] for rec in metrics(run_dir)] == [1, 2]
    assert not list(run_dir.glob(".*.tmp"))
    assert_same_run(reference, run_dir)


def test_a_run_being_trained_cannot_be_resumed_twice(data_dir, tmp_path) -> None:
    first = trainer(recipe(data_dir, tmp_path / "out", epochs=2))
    signal_at_step(first, 1)
    with pytest.raises(TrainingInterrupted):
        first.run()
    with RunLock(first.run_dir), pytest.raises(RunError, match="being trained by another process"):
        Trainer.resume(first.run_dir, show_progress=False)
    Trainer.resume(first.run_dir, show_progress=False).run()  # once the lock is free


def test_a_crash_between_last_and_best_is_repaired_on_resume(data_dir, tmp_path, monkeypatch) -> None:
    raw = recipe(data_dir, tmp_path / "out", epochs=2)
    reference = trainer(raw).run()
    real = loop_module.save_checkpoint

    class Crash(Exception):
        """Raised by the test to simulate a crash."""

    def crash_on_first_best(path, state) -> None:
        if path.name == "best.pt":
            raise Crash
        real(path, state)

    monkeypatch.setattr(loop_module, "save_checkpoint", crash_on_first_best)
    first = trainer(raw)
    with pytest.raises(Crash):
        first.run()
    assert (first.run_dir / "last.pt").is_file() and not (first.run_dir / "best.pt").exists()
    monkeypatch.setattr(loop_module, "save_checkpoint", real)
    Trainer.resume(first.run_dir, show_progress=False).run()
    assert_same_run(reference, first.run_dir)
    best, expected = load_checkpoint(first.run_dir / "best.pt"), load_checkpoint(reference / "best.pt")
    assert best["position"]["epoch"] == expected["position"]["epoch"]
    assert all(torch.equal(best["model"][k], expected["model"][k]) for k in expected["model"])
