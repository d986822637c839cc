"""The best epoch is chosen on validation, never on test: with scripted metrics where the two disagree,
best.pt, summary.json and compare all follow validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mtlcli.runs import BEST
from mtlcli.training import load_checkpoint
from mtlcli.training import loop as loop_module
from tests.integration._reliability import recipe, trainer

# per epoch: (val accuracy, test accuracy). Validation peaks at epoch 2, test at epochs 1 and 3.
SCRIPT = {1: (50.0, 95.0), 2: (80.0, 10.0), 3: (60.0, 99.0)}


def test_best_epoch_follows_validation_and_never_test(data_dir, tmp_path, monkeypatch) -> None:
    t = trainer(recipe(data_dir, tmp_path / "out", epochs=3))
    calls: list[str] = []

    def scripted(model: Any, tasks: list[Any], split: Any, *, batch_size: int) -> dict:
        which = "val" if split is t.splits["val"] else "test"
        calls.append(which)
        epoch = t.position.epoch
        value = SCRIPT[epoch][0 if which == "val" else 1]
        return {task.name: {"accuracy": value, "loss": 1.0} for task in tasks}

    monkeypatch.setattr(loop_module, "evaluate", scripted)
    best_weights: dict[int, dict[str, torch.Tensor]] = {}
    real_save = t.save

    def save(name: str, state: dict[str, Any]) -> None:
        if name == BEST:
            best_weights[t.position.epoch - 1] = {k: v.clone() for k, v in state["model"].items()}
        real_save(name, state)

    monkeypatch.setattr(t, "save", save)
    run_dir = t.run()
    assert calls == ["val", "test"] * 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == 2
    assert {task: m["accuracy"] for task, m in summary["test"].items()} == {"left": 10.0, "right": 10.0}
    assert sorted(best_weights) == [1, 2]  # best.pt written at epochs 1 and 2, not at epoch 3 (test 99)
    best = load_checkpoint(Path(run_dir) / "best.pt")
    assert all(torch.equal(best["model"][k], v) for k, v in best_weights[2].items())
