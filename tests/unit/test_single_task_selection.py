"""The single-task reference: each task's network is reported at its own best validation epoch."""

from __future__ import annotations

import json
from pathlib import Path

from mtlcli.results import Selection, load_runs, results_of
from tests.fake_runs import write_run

# per epoch: validation accuracy of left, right; test accuracy of left, right
CURVES = {1: (90.0, 50.0, 81.0, 41.0), 2: (80.0, 70.0, 72.0, 62.0), 3: (60.0, 75.0, 53.0, 73.0)}
# mean validation: 70, 75, 67.5 -> one epoch for all would be epoch 2 (test 72 / 62)


def rewrite_curves(run: Path) -> None:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for rec in lines:
        val_left, val_right, test_left, test_right = CURVES[rec["epoch"]]
        rec["val"]["left"]["accuracy"], rec["val"]["right"]["accuracy"] = val_left, val_right
        rec["test"]["left"]["accuracy"], rec["test"]["right"]["accuracy"] = test_left, test_right
    (run / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))


def selected(tmp_path: Path, method: str, selection: str = "best") -> dict[str, float]:
    run = write_run(tmp_path / method, f"{method}-s0", method=method, seed=0, test={"left": 0.0, "right": 0.0})
    rewrite_curves(run)
    runs, _ = load_runs([tmp_path / method])
    (result,), _ = results_of(runs, Selection.parse(selection))
    return {task: value for (task, _metric), value in result.test.items()}


def test_single_task_takes_each_task_at_its_own_best_validation_epoch(tmp_path: Path) -> None:
    assert selected(tmp_path, "single-task") == {"left": 81.0, "right": 73.0}  # epochs 1 and 3


def test_a_shared_network_takes_one_epoch_for_all_tasks(tmp_path: Path) -> None:
    assert selected(tmp_path, "uniform") == {"left": 72.0, "right": 62.0}  # epoch 2, the best mean


def test_last_k_is_the_same_rule_for_every_method(tmp_path: Path) -> None:
    assert selected(tmp_path, "single-task", "last:1") == {"left": 53.0, "right": 73.0}
