"""Every method trains one epoch on tiny data through the CLI; its state survives the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.methods import REGISTRY, build
from mtlcli.trainer import load_checkpoint

runner = CliRunner()
PER_STEP = [name for name in REGISTRY if name != "grid"]
EXTRA = {"static": ["--set", "method.weights=[0.3, 0.7]"], "mgda": ["--set", "method.grads=batched"]}
LEARNED = {"uncertainty": "s", "imtl-l": "s", "imtl": "s", "gradnorm": "w"}


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("method", PER_STEP)
def test_method_trains_and_its_state_round_trips(method: str, tiny_recipe, write_recipe) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--method", method, "-q", *EXTRA.get(method, [])])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == method
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(list(m["alphas"].values()))).all() for m in metrics)

    saved = load_checkpoint(run_dir / "last.pt")["method"]
    fresh = build(method, **saved_options(run_dir))
    fresh.setup(2, torch.device("cpu"))
    before = fresh.state_dict()
    fresh.load_state_dict(saved)
    assert _equal(fresh.state_dict(), saved)
    if method in LEARNED:  # training moved the learnt state away from its initial value, and it was saved
        assert not torch.equal(before[LEARNED[method]], saved[LEARNED[method]])
    if method == "single-task":  # two networks, nothing shared: twice the encoder parameters
        assert summary["parameters"] > 2 * 21_000


def saved_options(run_dir: Path) -> dict:
    method = yaml.safe_load((run_dir / "recipe.yaml").read_text())["method"]
    return {k: v for k, v in method.items() if k != "name"}


def test_grid_writes_one_run_per_point_and_marks_the_best(tiny_recipe, write_recipe) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--method", "grid", "--set", "method.points=3", "-q"])
    assert result.exit_code == 0, result.output
    sweep = Path(result.stdout.strip().splitlines()[-1])
    grid = json.loads((sweep / "grid.json").read_text())
    assert [r["weights"] for r in grid["runs"]] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    scores = [r["val_score"] for r in grid["runs"]]
    assert grid["best"]["val_score"] == max(scores) and sum(r["best"] for r in grid["runs"]) == 1
    for run in grid["runs"]:
        summary = json.loads((sweep / run["run"] / "summary.json").read_text())
        assert summary["method"] == "static" and summary["method_options"] == {"weights": run["weights"]}
        assert summary.get("grid_best", False) == run["best"]


def test_static_weights_must_match_the_tasks(tiny_recipe, write_recipe) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--method", "static", "--set", "method.weights=[0.2, 0.3, 0.5]"])
    assert result.exit_code == 1
    assert "3 weights" in result.output and "2 tasks" in result.output
