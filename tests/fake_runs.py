"""Run directories written by hand with known numbers, for testing `mtl compare` against hand calculation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import load_shipped_recipe

EPOCHS = 3
BEST = 2  # the epoch with the best validation score; epoch 3 has better *test* numbers (a trap)
TRAP = 5.0  # how much better test is at epoch 3, where validation is worse


def task_values(tasks: list[dict[str, Any]], accuracies: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per-task metrics from one accuracy per task (error = 100 - accuracy)."""
    out = {}
    for task in tasks:
        acc = accuracies[task["name"]]
        out[task["name"]] = {m: (acc if m == "accuracy" else 100.0 - acc) for m in task["metrics"]} | {"loss": 0.5}
    return out


def write_run(
    root: Path,
    name: str,
    *,
    method: str,
    seed: int,
    test: dict[str, float],
    val: float = 70.0,
    options: dict[str, Any] | None = None,
    tasks: list[dict[str, Any]] | None = None,
    dataset: str = "multifashion",
    scales: dict[str, float] | None = None,
    step_seconds: float = 0.01,
    train_seconds: float = 60.0,
    alphas: list[dict[str, float]] | None = None,
    complete: bool = True,
) -> Path:
    """A finished run of `EPOCHS` epochs whose best-validation epoch (2) has test accuracies `test`.

    Epoch 1: validation val - 10, test - 10; epoch 2: validation `val`, test `test`;
    epoch 3: validation val - 5, test + TRAP (so selecting on test would pick epoch 3).
    """
    tasks = copy.deepcopy(tasks or [{"name": "left", "metrics": ["accuracy"]}, {"name": "right", "metrics": ["accuracy"]}])
    for task in tasks:
        task.setdefault("loss", "cross_entropy")
        task["loss_scale"] = float((scales or {}).get(task["name"], 1.0))
    recipe = load_shipped_recipe("multifashion")
    recipe["data"]["name"] = dataset
    recipe["tasks"] = tasks
    recipe["method"] = {"name": method, **(options or {})}
    recipe["train"].update(seed=seed, epochs=EPOCHS)
    recipe["output"]["dir"] = str(root)
    path = root / name
    path.mkdir(parents=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    lines = []
    for epoch, (dv, dt) in enumerate(((-10.0, -10.0), (0.0, 0.0), (-5.0, TRAP)), start=1):
        weights = alphas[epoch - 1] if alphas else {t["name"]: 1.0 / len(tasks) for t in tasks}
        record = {
            "epoch": epoch,
            "lr": 0.05,
            "steps": 10,
            "train": {"loss": {t["name"]: 1.0 / epoch for t in tasks}},
            "alphas": weights,
            "val": task_values(tasks, {t["name"]: val + dv for t in tasks}),
            "test": task_values(tasks, {k: v + dt for k, v in test.items()}),
            "epoch_seconds": train_seconds / EPOCHS,
            "eval_seconds": 1.0,
            "step_seconds_mean": step_seconds,
            "step_seconds_median": step_seconds,
        }
        lines.append(json.dumps(record))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if complete:
        summary = {
            "status": "complete",
            "method": method,
            "seed": seed,
            "best_epoch": BEST,
            "total_seconds": train_seconds + EPOCHS,
            "train_seconds": train_seconds,
            "step_seconds_median": step_seconds,
        }
        (path / "summary.json").write_text(json.dumps(summary))
    return path


LEFT2 = [{"name": "left", "metrics": ["accuracy", "error"]}, {"name": "right", "metrics": ["accuracy"]}]


def write_study(root: Path) -> Path:
    """The main hand-calculated study (tasks: left accuracy+error, right accuracy).

    single-task 90/80, 92/82 (means 91/81); uniform 88/78, 90/80; mgda-ub 91/83, 93/81;
    grid points (seed 0) 0.2/0.8 -> 85/84 (val 70), 0.5/0.5 -> 89/80 (val 75), 0.8/0.2 -> 95/70 (val 72);
    mgda-ub with the left loss x10 (seed 0): 90.5/83; one unfinished uniform run.
    """
    t = LEFT2
    write_run(root, "st0", method="single-task", seed=0, test={"left": 90, "right": 80}, tasks=t, step_seconds=0.02)
    write_run(root, "st1", method="single-task", seed=1, test={"left": 92, "right": 82}, tasks=t, step_seconds=0.02)
    write_run(root, "u0", method="uniform", seed=0, test={"left": 88, "right": 78}, tasks=t, step_seconds=0.010)
    write_run(root, "u1", method="uniform", seed=1, test={"left": 90, "right": 80}, tasks=t, step_seconds=0.010)
    alphas = [{"left": 0.3, "right": 0.7}, {"left": 0.4, "right": 0.6}, {"left": 0.45, "right": 0.55}]
    for seed, (left, right, step) in enumerate(((91, 83, 0.012), (93, 81, 0.014))):
        write_run(root, f"m{seed}", method="mgda-ub", seed=seed, test={"left": left, "right": right}, tasks=t,
                  step_seconds=step, alphas=alphas)
    sweep = root / "grid-s0-abcdef"  # the layout of `mtl train --method grid`: static runs + grid.json
    points = []
    for name, weights, test, val in (
        ("g1", [0.2, 0.8], {"left": 85, "right": 84}, 70.0),
        ("g2", [0.5, 0.5], {"left": 89, "right": 80}, 75.0),
        ("g3", [0.8, 0.2], {"left": 95, "right": 70}, 72.0),
    ):
        write_run(sweep, name, method="static", seed=0, test=test, val=val, tasks=t, options={"weights": weights})
        points.append({"weights": weights, "run": name, "val_score": val, "best_epoch": 2})
    (sweep / "grid.json").write_text(json.dumps({"method": "grid", "runs": points, "best": points[1]}))
    write_run(root, "ms", method="mgda-ub", seed=0, test={"left": 90.5, "right": 83}, tasks=t, scales={"left": 10.0})
    write_run(root, "unfinished", method="uniform", seed=7, test={"left": 1, "right": 1}, tasks=t, complete=False)
    return root


def tasks_named(names: list[str], metrics: tuple[str, ...] = ("error",)) -> list[dict[str, Any]]:
    """A task list in which every task reports the same `metrics` (e.g. 40 binary attributes scored by error)."""
    return [{"name": name, "metrics": list(metrics)} for name in names]


def write_error_run(
    root: Path,
    name: str,
    *,
    method: str,
    seed: int,
    errors: dict[str, float],
    metrics: tuple[str, ...] = ("error",),
    **kwargs: Any,
) -> Path:
    """`write_run` with a task per key of `errors`: its test `error` (%) at the best epoch is the value.

    Every task reports `metrics`; accuracy, where listed, is 100 - error.
    """
    test = {task: 100.0 - error for task, error in errors.items()}
    return write_run(root, name, method=method, seed=seed, test=test, tasks=tasks_named(list(errors), metrics), **kwargs)


def base_errors(n: int) -> list[float]:
    """Single-task errors 1..n (%) in an order unrelated to the task order: task i gets (7 i mod n) + 1 (n coprime to 7)."""
    return [float((7 * i) % n + 1) for i in range(n)]


def write_many_task_study(
    root: Path, names: list[str], *, metrics: tuple[str, ...] = ("error",), dataset: str = "celeba"
) -> Path:
    """Seeds 0 and 1 of three methods on len(names) tasks, errors integral so everything is exact.

    Task i, seed s: single-task base_errors[i] + s; uniform base + 2 + s; mgda-ub base + 1 + s on the first
    three quarters of the tasks and base + 3 + s on the rest. ms/step 20, 10 and 12.
    """
    base = base_errors(len(names))
    cut = 3 * len(names) // 4
    offsets = {
        "single-task": ([0.0] * len(names), 0.02),
        "uniform": ([2.0] * len(names), 0.01),
        "mgda-ub": ([1.0 if i < cut else 3.0 for i in range(len(names))], 0.012),
    }
    for method, (shift, step) in offsets.items():
        for seed in (0, 1):
            errors = {n: base[i] + shift[i] + seed for i, n in enumerate(names)}
            write_error_run(root, f"{method}-{seed}", method=method, seed=seed, errors=errors, metrics=metrics,
                            dataset=dataset, step_seconds=step)
    return root
