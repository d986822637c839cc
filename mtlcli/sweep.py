"""The grid-search baseline of Sener & Koltun (2018): `static` over an even grid of the simplex."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from mtlcli import recipe as recipes
from mtlcli.errors import MtlError
from mtlcli.io import write_json_atomic
from mtlcli.methods.grid import MAX_GRID_RUNS, GridOptions, default_points, grid_size, simplex_grid
from mtlcli.recipe import Recipe
from mtlcli.runs import SUMMARY, create_run_dir
from mtlcli.training.loop import Trainer
from mtlcli.training.trackers import require

GRID = "grid.json"


def train_grid(recipe: Recipe, *, console: Console, show_progress: bool = True) -> Path:
    """The grid-search baseline: one `static` run per point of an even simplex grid, in one sweep
    directory; `grid.json` lists every run with its weights and validation score and names the best,
    whose summary.json also gets `"grid_best": true`."""
    options = GridOptions(**recipe.method.options)
    num_tasks = len(recipe.tasks)
    points = options.points or default_points(num_tasks)
    size = grid_size(num_tasks, points)
    if size > MAX_GRID_RUNS:
        raise MtlError(
            f"grid over {num_tasks} tasks with {points} points per axis is {size:,} runs (more than {MAX_GRID_RUNS:,})",
            hint="pick fewer tasks, or --set method.points=2 (one run per task), or train chosen weights with static",
        )
    grid = simplex_grid(num_tasks, points)
    require(list(recipe.output.trackers))  # a tracker's missing package: one error, before the sweep directory
    sweep = create_run_dir(Path(recipe.output.dir), "grid", recipe.train.seed)
    console.print(f"grid: {len(grid)} static runs ({points} points per axis) in {sweep}")
    runs: list[dict[str, Any]] = []
    for weights in grid:
        raw = recipe.dump()
        raw["method"] = {"name": "static", "weights": weights}
        raw["output"]["dir"] = str(sweep)
        point = recipes.validate(raw, source=f"grid point {weights}")
        trainer = Trainer(point, console=console, show_progress=show_progress)
        console.print(f"training static {weights} on {recipe.data.prepared or recipe.data.name} ({trainer.device})")
        run_dir = trainer.run()
        runs.append(
            {"weights": weights, "run": run_dir.name, "val_score": trainer.best_score, "best_epoch": trainer.best_epoch}
        )
    best = max(range(len(runs)), key=lambda i: runs[i]["val_score"])  # first of equals: grid order
    for i, run in enumerate(runs):
        run["best"] = i == best
    tasks = [t.name for t in recipe.tasks]
    write_json_atomic(sweep / GRID, {"method": "grid", "points": points, "tasks": tasks, "runs": runs, "best": runs[best]})
    summary_path = sweep / runs[best]["run"] / SUMMARY
    summary = json.loads(summary_path.read_text())
    summary["grid_best"] = True
    write_json_atomic(summary_path, summary)
    console.print(f"grid: best on validation {runs[best]['weights']} ({runs[best]['run']})")
    return sweep
