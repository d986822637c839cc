"""Reliability on CUDA (skipped without a GPU): the deferred non-finite check and resume on the device."""

from __future__ import annotations

import math
import signal

import pytest
import torch

from mtlcli.training import NonFiniteError, Trainer, TrainingInterrupted, load_checkpoint
from tests.integration._reliability import metrics, recipe, signal_at_step, trainer
from tests.integration.test_nonfinite import STEPS, poison_task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_stop_on_cuda_is_deferred_names_the_step_and_saves_nothing_poisoned(data_dir, tmp_path) -> None:
    t = trainer(recipe(data_dir, tmp_path / "out", epochs=3, device="cuda"))
    assert not t.guard.immediate  # no host sync per step under `stop` on CUDA
    poison_task(t, "right", {STEPS + 2})
    with pytest.raises(NonFiniteError, match=r"step 6 \(epoch 2, batch 2\): task 'right' loss is nan"):
        t.run()
    state = load_checkpoint(t.run_dir / "last.pt")
    assert state["position"]["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_skip_on_cuda_drops_and_counts(data_dir, tmp_path) -> None:
    t = trainer(recipe(data_dir, tmp_path / "out", epochs=1, device="cuda", on_nonfinite="skip"))
    poison_task(t, "left", {2}, math.inf)
    run_dir = t.run()
    assert metrics(run_dir)[0]["skipped_steps"] == 1


def test_resume_on_cuda_matches_an_uninterrupted_run(data_dir, tmp_path, restore_determinism) -> None:
    raw = recipe(data_dir, tmp_path / "out", epochs=2, device="cuda", deterministic=True)
    reference = trainer(raw).run()
    first = trainer(raw)
    signal_at_step(first, STEPS + 2, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        first.run()
    Trainer.resume(first.run_dir, show_progress=False).run()
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(first.run_dir / "last.pt")
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-6)
    for x, y in zip(metrics(reference), metrics(first.run_dir), strict=True):
        assert x["val"].keys() == y["val"].keys()
